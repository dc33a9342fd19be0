//! Joins a link of the namespace and its tap with tc, Kata's "tcfilter"
//! model: an `ingress` qdisc on each, and on each a u32 filter matching
//! every frame with a mirred action redirecting it to the other's egress.
//!
//! What arrives on the link (from Docker's bridge) leaves through the tap
//! (to the guest) and the other way round, before the namespace's own IP
//! stack sees it: the link keeps its addresses, but only the guest answers
//! for them. Everything is netlink; no `tc` program runs.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirror, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::netlink::{self, Netlink};

/// The handle of an ingress qdisc (`ffff:`), the parent of its filters.
const INGRESS_QDISC: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// Every protocol (`protocol all`), as the filter header wants it: in
/// network byte order.
const ETH_P_ALL: u16 = 0x0003;
/// The redirect filter's priority: the only filter on the qdisc.
const PRIORITY: u16 = 1;

/// Joins `link` and `tap` (interface indexes) both ways. On failure,
/// whatever was added is removed again.
pub fn join(nl: &mut Netlink, link: u32, tap: u32) -> Result<(), netlink::Error> {
    clear_stale(nl, link)?;
    let mut added = Vec::new();
    let mut steps = || -> Result<(), netlink::Error> {
        add_ingress(nl, link)?;
        added.push(link);
        add_ingress(nl, tap)?;
        added.push(tap);
        redirect(nl, link, tap)?;
        redirect(nl, tap, link)
    };
    let result = steps();
    if result.is_err() {
        // Only our own qdiscs (and their filters with them) go.
        for index in added.into_iter().rev() {
            if let Err(undo) = remove_ingress(nl, index) {
                tracing::warn!(index, "undoing the tc setup: {undo}");
            }
        }
    }
    result
}

/// Removes the ingress qdisc of `link` when all its filters redirect to
/// interfaces that are gone: the set-up of a sandbox process that was killed
/// (its tap went with its fd, its qdisc on the link stayed). Any other
/// qdisc is someone else's and stays.
pub fn clear_stale(nl: &mut Netlink, link: u32) -> Result<(), netlink::Error> {
    let targets = redirects(nl, link)?;
    if !targets.is_empty() && targets.iter().all(|&t| !interface_exists(t)) {
        tracing::info!(link, "removing a killed sandbox's tc redirect");
        remove_ingress(nl, link)?;
    }
    Ok(())
}

/// Whether interface `index` exists in this network namespace.
fn interface_exists(index: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname needs.
    index != 0 && !unsafe { libc::if_indextoname(index, name.as_mut_ptr()) }.is_null()
}

/// Adds an `ingress` qdisc to interface `index`. One that is there already
/// (someone else's) is an error: it is not ours to change.
pub fn add_ingress(nl: &mut Netlink, index: u32) -> Result<(), netlink::Error> {
    nl.change(
        &format!("adding an ingress qdisc to interface {index}"),
        RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(index)),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Removes the `ingress` qdisc of interface `index`, and its filters with
/// it. One that is gone already, or an interface that is, is fine.
pub fn remove_ingress(nl: &mut Netlink, index: u32) -> Result<(), netlink::Error> {
    let removed = nl.change(
        &format!("removing the ingress qdisc of interface {index}"),
        RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)),
        0,
    );
    match removed {
        Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)) => Ok(()),
        other => other,
    }
}

/// Adds to `from`'s ingress qdisc a filter that redirects every frame to
/// `to`'s egress.
pub fn redirect(nl: &mut Netlink, from: u32, to: u32) -> Result<(), netlink::Error> {
    let mut message = on_ingress(from);
    message.header.info = (u32::from(PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());

    // One key that masks nothing: every frame matches.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];

    let mut mirror = TcMirror::default();
    // Stolen: the frame is consumed here, never handed to this side's stack.
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_owned()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];

    message.attributes = vec![
        TcAttribute::Kind(TcFilterU32::KIND.to_owned()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    nl.change(
        &format!("adding a redirect filter from interface {from} to {to}"),
        RouteNetlinkMessage::NewTrafficFilter(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// The interfaces that `index`'s ingress filters redirect frames to, as
/// the kernel reports them (empty without an ingress qdisc).
pub fn redirects(nl: &mut Netlink, index: u32) -> Result<Vec<u32>, netlink::Error> {
    let answers = match nl.dump(
        &format!("listing the ingress filters of interface {index}"),
        RouteNetlinkMessage::GetTrafficFilter(on_ingress(index)),
    ) {
        Ok(answers) => answers,
        // No ingress qdisc: no filters.
        Err(e) if matches!(e.errno(), Some(libc::EINVAL | libc::ENOENT)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut targets = Vec::new();
    for answer in answers {
        let RouteNetlinkMessage::NewTrafficFilter(filter) = answer else {
            continue;
        };
        for attribute in &filter.attributes {
            let TcAttribute::Options(options) = attribute else {
                continue;
            };
            for option in options {
                let TcOption::U32(TcFilterU32Option::Action(actions)) = option else {
                    continue;
                };
                for action in actions {
                    for a in &action.attributes {
                        let TcActionAttribute::Options(options) = a else {
                            continue;
                        };
                        for o in options {
                            if let TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) = o {
                                if m.eaction == TcMirrorActionType::EgressRedir {
                                    targets.push(m.ifindex);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(targets)
}

/// The ingress qdisc of interface `index`.
fn ingress_qdisc(index: u32) -> TcMessage {
    let mut message = TcMessage::with_index(index_i32(index));
    message.header.parent = TcHandle::INGRESS;
    message.header.handle = INGRESS_QDISC;
    message.attributes = vec![TcAttribute::Kind("ingress".to_owned())];
    message
}

/// A filter message under interface `index`'s ingress qdisc.
fn on_ingress(index: u32) -> TcMessage {
    let mut message = TcMessage::with_index(index_i32(index));
    message.header.parent = INGRESS_QDISC;
    message
}

/// Interface indexes are positive `int`s in the kernel; rtnetlink's
/// unsigned ones always fit.
fn index_i32(index: u32) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

//! The QEMU side of vhost-user, for tests: guest memory in a shared file,
//! and vrings set up through `vhost`'s frontend, as QEMU would.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory size.
pub const MEM: usize = 1 << 20;
/// Entries per queue.
pub const QSIZE: u16 = 16;

/// Guest addresses of queue `q`'s descriptor table, avail and used rings.
pub fn ring(q: usize) -> (u64, u64, u64) {
    let base = 0x1_0000 * (q as u64 + 1);
    (base, base + 0x1000, base + 0x2000)
}

/// Waits (at most 5 s) until `fd` is signalled.
pub fn wait_event(fd: &EventFd) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(n, 1, "the backend signalled the queue");
    fd.read().unwrap();
}

/// File-backed guest memory, handed to the backend with SET_MEM_TABLE.
pub fn shared_memory(frontend: &mut Frontend) -> GuestMemoryMmap {
    let file: File = tempfile::tempfile().unwrap();
    file.set_len(MEM as u64).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
        GuestAddress(0),
        MEM,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap();
    let region =
        VhostUserMemoryRegionInfo::from_guest_region(mem.find_region(GuestAddress(0)).unwrap())
            .unwrap();
    frontend.set_mem_table(&[region]).unwrap();
    mem
}

/// Sets up and enables `count` vrings at [`ring`]'s addresses; returns
/// their kick and call eventfds.
pub fn setup_vrings(
    frontend: &mut Frontend,
    mem: &GuestMemoryMmap,
    count: usize,
) -> (Vec<EventFd>, Vec<EventFd>) {
    let va = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    let mut kicks = Vec::new();
    let mut calls = Vec::new();
    for q in 0..count {
        let (desc, avail, used) = ring(q);
        frontend.set_vring_num(q, QSIZE).unwrap();
        let config = VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: va + desc,
            used_ring_addr: va + used,
            avail_ring_addr: va + avail,
            log_addr: None,
        };
        frontend.set_vring_addr(q, &config).unwrap();
        frontend.set_vring_base(q, 0).unwrap();
        let (kick, call) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
        frontend.set_vring_call(q, &call).unwrap();
        frontend.set_vring_kick(q, &kick).unwrap();
        frontend.set_vring_enable(q, true).unwrap();
        kicks.push(kick);
        calls.push(call);
    }
    (kicks, calls)
}

//! The virtio-fs device served over vhost-user, driven by an in-process frontend (vhost's
//! `Frontend`, as QEMU would): memory table from a shared file, two vrings (hiprio and one
//! request queue), kick and call eventfds, then real FUSE requests on the request queue.

use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, InHeader, InitIn, InitOut, Opcode, OpenOut, OutHeader, WriteIn, WriteOut,
};
use fuse_backend_rs::api::filesystem::ROOT_ID;
use husk_vmm::devices::fs::serve_fs;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

mod frontend;
use frontend::{ring, setup_vrings, shared_memory, wait_event, QSIZE};

const REQUEST_QUEUE: usize = 1;
const REQ: u64 = 0x8_0000;
const REPLY: u64 = 0xa_0000;
const REPLY_LEN: u32 = 0x1_0000;

/// A guest driver for the request queue.
struct Driver {
    mem: GuestMemoryMmap,
    kick: EventFd,
    call: EventFd,
    next: u16,
}

impl Driver {
    /// Sends one FUSE request and returns (error, body) of the reply.
    fn call(&mut self, opcode: Opcode, nodeid: u64, parts: &[&[u8]]) -> (i32, Vec<u8>) {
        let body: Vec<u8> = parts.concat();
        let header = InHeader {
            len: (size_of::<InHeader>() + body.len()) as u32,
            opcode: opcode as u32,
            unique: u64::from(self.next) + 1,
            nodeid,
            ..Default::default()
        };
        let request = [header.as_slice(), &body].concat();
        self.mem.write_slice(&request, GuestAddress(REQ)).unwrap();

        let (desc, avail, used) = ring(REQUEST_QUEUE);
        let write_desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let at = desc + 16 * i;
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        };
        write_desc(0, REQ, request.len() as u32, 1, 1);
        write_desc(1, REPLY, REPLY_LEN, 2, 0);
        let slot = u64::from(self.next % QSIZE);
        self.mem
            .write_obj(0u16, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.next += 1;
        self.mem
            .write_obj(self.next, GuestAddress(avail + 2))
            .unwrap();
        self.kick.write(1).unwrap();

        wait_event(&self.call);
        assert_eq!(
            self.mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(),
            self.next
        );
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(used + 8 + 8 * slot))
            .unwrap();
        let mut reply = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(REPLY))
            .unwrap();
        let out = *OutHeader::from_slice(&reply[..size_of::<OutHeader>()]).unwrap();
        assert_eq!(out.len, len);
        (out.error, reply[size_of::<OutHeader>()..].to_vec())
    }
}

fn obj<T: ByteValued>(body: &[u8]) -> T {
    *T::from_slice(&body[..size_of::<T>()]).unwrap()
}

#[test]
fn frontend_mounts_reads_and_writes_the_share() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("shared");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello"), b"hello from the host").unwrap();
    let vhost_path = dir.path().join("fs.sock");
    let mut handle = serve_fs(&vhost_path, &share, "husk").unwrap();

    let mut frontend = Frontend::connect(&vhost_path, 2).unwrap();
    frontend.set_owner().unwrap();
    let features = frontend.get_features().unwrap();
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1");
    assert_ne!(features & (1 << 29), 0, "VIRTIO_RING_F_EVENT_IDX offered");
    // This simple driver never publishes `used_event`, so it does not ack EVENT_IDX.
    frontend.set_features(features & !(1 << 29)).unwrap();
    let proto = frontend.get_protocol_features().unwrap();
    assert!(proto.contains(VhostUserProtocolFeatures::MQ));
    frontend.set_protocol_features(proto).unwrap();
    assert_eq!(
        frontend.get_queue_num().unwrap(),
        2,
        "hiprio + one request queue"
    );

    let mem = shared_memory(&mut frontend);
    let (mut kicks, mut calls) = setup_vrings(&mut frontend, &mem, 2);

    let mut guest = Driver {
        mem,
        kick: kicks.swap_remove(REQUEST_QUEUE),
        call: calls.swap_remove(REQUEST_QUEUE),
        next: 0,
    };
    let init = InitIn {
        major: 7,
        minor: 31,
        max_readahead: 0x2_0000,
        flags: 0,
    };
    let (err, body) = guest.call(Opcode::Init, 0, &[init.as_slice()]);
    assert_eq!(err, 0);
    assert_eq!(obj::<InitOut>(&body).major, 7);

    let (err, body) = guest.call(Opcode::Lookup, ROOT_ID, &[b"hello\0"]);
    assert_eq!(err, 0);
    assert_eq!(obj::<EntryOut>(&body).attr.size, 19);

    let create = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | 0o666,
        umask: 0o002,
        fuse_flags: 0,
    };
    let (err, body) = guest.call(
        Opcode::Create,
        ROOT_ID,
        &[create.as_slice(), b"fromguest\0"],
    );
    assert_eq!(err, 0);
    let entry: EntryOut = obj(&body);
    let open: OpenOut = obj(&body[size_of::<EntryOut>()..]);
    let data = b"written over vhost-user";
    let write = WriteIn {
        fh: open.fh,
        size: data.len() as u32,
        ..Default::default()
    };
    let (err, body) = guest.call(Opcode::Write, entry.nodeid, &[write.as_slice(), data]);
    assert_eq!(err, 0);
    assert_eq!(obj::<WriteOut>(&body).size as usize, data.len());
    assert_eq!(std::fs::read(share.join("fromguest")).unwrap(), data);
    // The guest's umask (002) applies, not the process's (022 would give 0644).
    let mode = std::fs::metadata(share.join("fromguest")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o664
    );

    drop(frontend);
    handle.stop();
    assert!(!vhost_path.exists());
    // The process's own root is untouched by the serving thread's chroot.
    assert!(std::path::Path::new("/etc/passwd").exists());
}

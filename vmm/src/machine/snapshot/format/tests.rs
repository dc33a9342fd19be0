use std::path::PathBuf;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};

use super::*;
use crate::machine::snapshot::pod::to_bytes;
use crate::virtio::{QueueSnapshot, CONFIG_SNAPSHOT_LEN};

fn vcpu() -> VcpuState {
    VcpuState {
        cpuid: to_bytes(&kvm_cpuid_entry2 {
            function: 1,
            ..Default::default()
        }),
        mp_state: to_bytes(&kvm_mp_state::default()),
        regs: to_bytes(&kvm_regs {
            rip: 0x10_0000,
            ..Default::default()
        }),
        sregs: to_bytes(&kvm_sregs::default()),
        xsave: to_bytes(&kvm_xsave::default()),
        xcrs: to_bytes(&kvm_xcrs::default()),
        debugregs: to_bytes(&kvm_debugregs::default()),
        lapic: to_bytes(&kvm_lapic_state::default()),
        events: to_bytes(&kvm_vcpu_events::default()),
        msrs: vec![(0x10, 1234)],
        tsc_khz: 2_000_000,
    }
}

fn transport() -> TransportState {
    TransportState {
        device_type: 19,
        device_features: 1 << 32,
        config: vec![0; CONFIG_SNAPSHOT_LEN],
        status: 15,
        device_features_sel: 0,
        driver_features_sel: 1,
        driver_features: 1 << 32,
        queue_sel: 0,
        interrupt_status: 0,
        config_generation: 0,
        queues: vec![QueueSnapshot {
            max_size: 256,
            size: 128,
            ready: true,
            desc_table: 0x1000,
            avail_ring: 0x2000,
            used_ring: 0x3000,
            next_avail: 7,
            next_used: 7,
        }],
    }
}

fn state() -> MachineState {
    MachineState {
        husk_version: env!("CARGO_PKG_VERSION").into(),
        host: HostIdentity::detect(),
        key: "kernel=abc initrd=def vcpus=1 mem=64".into(),
        vcpus: 1,
        memory_mib: 64,
        boot: BootState {
            entry: 0x10_0000,
            pvh: false,
            kernel_end: 0x20_0000,
            initrd: Some((0x300_0000, 4096)),
        },
        vm: VmState {
            irqchips: (0..3)
                .map(|chip_id| {
                    to_bytes(&kvm_irqchip {
                        chip_id,
                        ..Default::default()
                    })
                })
                .collect(),
            pit: to_bytes(&kvm_pit_state2::default()),
            clock: to_bytes(&kvm_clock_data::default()),
        },
        cpus: vec![vcpu()],
        serial: SerialState {
            registers: [12, 0, 0, 1, 3, 0x60, 8, 0xb0, 0],
            in_buffer: Vec::new(),
        },
        transports: vec![transport()],
    }
}

fn path() -> PathBuf {
    PathBuf::from("/snap/state")
}

/// `state` encoded with a correct header and checksum, so only the body's
/// own checks can refuse it.
fn reencoded(state: &MachineState) -> Vec<u8> {
    let body = serde_json::to_vec(state).unwrap();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn refusal(bytes: &[u8]) -> String {
    MachineState::decode(bytes, &path())
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn a_state_round_trips() {
    let s = state();
    s.validate().unwrap();
    let bytes = s.encode().unwrap();
    assert_eq!(&bytes[..8], b"HUSKSNAP");
    assert_eq!(MachineState::decode(&bytes, &path()).unwrap(), s);
}

#[test]
fn a_truncated_file_is_refused_at_every_length() {
    let bytes = state().encode().unwrap();
    for len in [0, 4, 8, 12, 23, 24, 25, bytes.len() / 2, bytes.len() - 1] {
        let err = refusal(&bytes[..len]);
        assert!(
            err.contains("not a husk snapshot") || err.contains("its header says"),
            "length {len}: {err}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(b' ');
    assert!(refusal(&longer).contains("its header says"));
}

#[test]
fn a_flipped_byte_in_the_body_fails_the_checksum() {
    let mut bytes = state().encode().unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    assert!(refusal(&bytes).contains("checksum"));
}

#[test]
fn another_magic_or_format_version_is_refused() {
    let mut bytes = state().encode().unwrap();
    bytes[0] = b'X';
    assert!(refusal(&bytes).contains("not a husk snapshot"));
    let mut bytes = state().encode().unwrap();
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let err = refusal(&bytes);
    assert!(
        err.contains("format version 2") || err.contains("format version"),
        "{err}"
    );
}

#[test]
fn an_absurd_body_length_is_refused_before_reading_it() {
    let mut bytes = state().encode().unwrap();
    bytes[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(refusal(&bytes).contains("at most"));
}

#[test]
fn impossible_values_with_a_good_checksum_are_refused() {
    type Breaker = Box<dyn Fn(&mut MachineState)>;
    let cases: Vec<(&str, Breaker)> = vec![
        ("vCPU states for", Box::new(|s| s.vcpus = 2)),
        ("0 vCPUs", Box::new(|s| s.vcpus = 0)),
        ("MiB of guest memory", Box::new(|s| s.memory_mib = 1)),
        (
            "registers is",
            Box::new(|s| s.cpus[0].regs.pop().map(drop).unwrap()),
        ),
        ("CPUID is", Box::new(|s| s.cpus[0].cpuid.clear())),
        ("MSRs", Box::new(|s| s.cpus[0].msrs = vec![(0, 0); 5000])),
        ("TSC frequency", Box::new(|s| s.cpus[0].tsc_khz = 0)),
        (
            "interrupt controllers",
            Box::new(|s| {
                s.vm.irqchips.pop();
            }),
        ),
        (
            "interrupt controller 2 where 0",
            Box::new(|s| s.vm.irqchips.swap(0, 2)),
        ),
        ("PIT is", Box::new(|s| s.vm.pit.truncate(3))),
        (
            "virtio devices",
            Box::new(|s| s.transports = vec![transport(); 100]),
        ),
        (
            "invalid queue",
            Box::new(|s| s.transports[0].queues[0].size = 100),
        ),
        (
            "invalid queue",
            Box::new(|s| s.transports[0].queues[0].size = 512),
        ),
        (
            "invalid queue",
            Box::new(|s| s.transports[0].queues[0].desc_table = 0x1001),
        ),
        (
            "configuration space",
            Box::new(|s| s.transports[0].config.push(0)),
        ),
        ("FIFO", Box::new(|s| s.serial.in_buffer = vec![0; 65])),
    ];
    for (want, break_it) in cases {
        let mut s = state();
        break_it(&mut s);
        let err = refusal(&reencoded(&s));
        assert!(
            err.contains("malformed") && err.contains(want),
            "{want}: {err}"
        );
    }
    let mut garbage = reencoded(&state());
    let body_start = 24;
    garbage.truncate(body_start);
    garbage.extend_from_slice(b"{\"not\": \"a state\"}");
    let body = &garbage[body_start..];
    let (len, crc) = (body.len() as u64, crc32fast::hash(body));
    garbage[12..20].copy_from_slice(&len.to_le_bytes());
    garbage[20..24].copy_from_slice(&crc.to_le_bytes());
    assert!(refusal(&garbage).contains("malformed"));
}

#[test]
fn another_husk_host_or_key_is_refused_by_name() {
    let s = state();
    let host = HostIdentity::detect();
    s.check_compatible(&s.key, &host).unwrap();

    let err = s
        .check_compatible("kernel=other", &host)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kernel=other") && err.contains("kernel=abc"),
        "{err}"
    );

    let mut old = state();
    old.husk_version = "0.0.0-old".into();
    let err = old.check_compatible(&s.key, &host).unwrap_err().to_string();
    assert!(err.contains("husk 0.0.0-old"), "{err}");

    let mut elsewhere = state();
    elsewhere.host.cpu_brand = "Some Other CPU".into();
    let err = elsewhere
        .check_compatible(&s.key, &host)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("CPU model") && err.contains("Some Other CPU"),
        "{err}"
    );
}

#[test]
fn files_are_written_whole_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let s = state();
    s.write(&path).unwrap();
    assert!(!dir.path().join("state.tmp").exists());
    assert_eq!(MachineState::read(&path).unwrap(), s);
    std::fs::write(&path, b"HUSKSNAP").unwrap();
    let err = MachineState::read(&path).unwrap_err().to_string();
    assert!(err.contains("its header says 24"), "{err}");
    let err = MachineState::read(&dir.path().join("absent")).unwrap_err();
    assert!(matches!(err, SnapshotError::Io { .. }));
}

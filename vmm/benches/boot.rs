//! VMM start → first guest instruction, and VMM resident memory excluding
//! guest RAM: the builtin VMM against `qemu-system-x86_64 -M microvm -accel
//! kvm`, booting the same minimal bzImage whose first instruction (real-mode
//! setup for QEMU's firmware path, 64-bit entry for the builtin VMM) writes
//! one byte to COM1. Runs are interleaved; medians are printed.
//!
//! `cargo bench -p husk-vmm --bench boot` (RUNS=n to change the count).
//! Needs /dev/kvm; the QEMU column needs `qemu-system-x86` installed.

use std::fs;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use husk_vmm::machine::{Vm, VmConfig};
use vm_memory::{GuestAddress, GuestMemory};

const MEM_MIB: u64 = 64;

/// Sends once, on the first byte the guest writes.
struct FirstByte(Option<mpsc::Sender<()>>);

impl Write for FirstByte {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A bzImage that writes 'X' to COM1 from both entry points and halts.
fn payload() -> Vec<u8> {
    let mut img = vec![0u8; 1024];
    img[0x1f1] = 1;
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x200..0x202].copy_from_slice(&[0xeb, 0x66]); // jmp 0x268
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 1;
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
    img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes());
    img[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes());
    // mov al,'X'; mov dx,0x3f8; out dx,al; cli; hlt; jmp $-2 (real mode)
    let real = [0xb0, b'X', 0xba, 0xf8, 0x03, 0xee, 0xfa, 0xf4, 0xeb, 0xfd];
    img[0x268..0x268 + real.len()].copy_from_slice(&real);
    let mut protected = vec![0xf4u8; 0x200];
    // Same in 64-bit mode (operand-size prefix for dx).
    protected.extend_from_slice(&[
        0xb0, b'X', 0x66, 0xba, 0xf8, 0x03, 0xee, 0xfa, 0xf4, 0xeb, 0xfd,
    ]);
    img.extend_from_slice(&protected);
    img
}

/// Resident KiB of `pid`, leaving out mappings for which `skip(start, size)`.
fn rss_kib(pid: &str, skip: impl Fn(u64, u64) -> bool) -> u64 {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut total = 0;
    let mut skipping = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                skipping = skip(a, b - a);
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("Rss:") {
            if !skipping {
                total += rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    total
}

fn builtin(kernel: &std::path::Path) -> (Duration, u64) {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let mut config = VmConfig::new(kernel);
    config.memory_mib = MEM_MIB;
    config.console = Box::new(FirstByte(Some(tx)));
    let mut vm = Vm::new(config).expect("builtin VM");
    vm.start().expect("start");
    rx.recv_timeout(Duration::from_secs(30))
        .expect("first byte");
    let elapsed = start.elapsed();
    let ram = vm.memory().get_host_address(GuestAddress(0)).unwrap() as u64;
    let rss = rss_kib("self", |a, _| a == ram);
    vm.stop();
    (elapsed, rss)
}

fn qemu(kernel: &std::path::Path) -> Option<(Duration, u64)> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm", "-accel", "kvm", "-m"])
        .arg(MEM_MIB.to_string())
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut byte = [0u8; 1];
    let ok = child.stdout.as_mut()?.read_exact(&mut byte).is_ok();
    let elapsed = start.elapsed();
    let rss = rss_kib(&child.id().to_string(), |_, size| size >= MEM_MIB << 20);
    let _ = child.kill();
    let _ = child.wait();
    ok.then_some((elapsed, rss))
}

fn median<T: Copy + Ord>(v: &mut [T]) -> T {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("skipping: /dev/kvm cannot be opened");
        return;
    }
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("bench.bzimage");
    fs::write(&kernel, payload()).unwrap();

    let (mut bt, mut br, mut qt, mut qr) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (t, r) = builtin(&kernel);
        bt.push(t);
        br.push(r);
        if let Some((t, r)) = qemu(&kernel) {
            qt.push(t);
            qr.push(r);
        }
    }
    let (bt, br) = (median(&mut bt), median(&mut br));
    println!("runs: {runs} (interleaved), guest RAM {MEM_MIB} MiB, medians");
    println!("| VMM | start → first guest instruction | VMM RSS excluding guest RAM |");
    println!("| --- | --- | --- |");
    println!(
        "| builtin | {:.2} ms | {:.1} MiB |",
        bt.as_secs_f64() * 1e3,
        br as f64 / 1024.0
    );
    if qt.is_empty() {
        println!("| qemu microvm | not measured (qemu-system-x86_64 missing or failed) | |");
        return;
    }
    let (qt, qr) = (median(&mut qt), median(&mut qr));
    println!(
        "| qemu -M microvm -accel kvm | {:.2} ms | {:.1} MiB |",
        qt.as_secs_f64() * 1e3,
        qr as f64 / 1024.0
    );
    println!(
        "| ratio qemu / builtin | {:.1}x | {:.1}x |",
        qt.as_secs_f64() / bt.as_secs_f64(),
        qr as f64 / br as f64
    );
}

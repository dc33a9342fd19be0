//! A minimal MC146818 CMOS RTC at ports 0x70 (index) and 0x71 (data).
//!
//! Linux reads the wall clock from it at boot (`mc146818_get_time`), and a
//! distribution kernel waits in `mc146818_avoid_UIP` for the "update in
//! progress" bit of status register A to read clear; on an unclaimed port
//! every read is 0xff, so UIP never clears and boot stalls. This device
//! answers the time and date from the host's UTC clock at each read (so it
//! never needs a ticking thread and UIP is never set), keeps the mode bits
//! of status register B, and treats every other byte as plain RAM. It
//! raises no interrupt: Linux's clock events come from the LAPIC timer.

use std::time::{SystemTime, UNIX_EPOCH};

use super::bus::BusDevice;

/// Ports: index at offset 0, data at offset 1.
pub const CMOS_PORT_COUNT: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY_OF_MONTH: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
/// The century byte most PC firmware keeps (ACPI FADT names it, when there
/// is one); plain RAM here, set at power-on.
const REG_CENTURY: u8 = 0x32;

/// Status A: update in progress; never set here, the clock is read whole.
const A_UIP: u8 = 0x80;
/// Status A at power-on: 32.768 kHz time base, 1024 Hz periodic rate.
const A_DEFAULT: u8 = 0x26;
/// Status B: time and date in binary rather than BCD.
const B_BINARY: u8 = 0x04;
/// Status B: 24-hour rather than 12-hour clock.
const B_24H: u8 = 0x02;
/// Status D: valid RAM and time (the battery is fine).
const D_VRT: u8 = 0x80;
/// Hours register in 12-hour mode: PM.
const HOURS_PM: u8 = 0x80;
/// Bit 7 of the index port masks NMIs on a PC; there is nothing to mask.
const INDEX_MASK: u8 = 0x7f;

/// Seconds since the Unix epoch, UTC.
pub type Clock = fn() -> i64;

/// The host's UTC wall clock.
fn host_clock() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // A host clock before 1970 is wrong; 1970 is as good as any.
        Err(_) => 0,
    }
}

/// The CMOS RTC and its 128 bytes of RAM.
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    clock: Clock,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl Cmos {
    /// An RTC following the host's UTC clock, in BCD and 24-hour mode
    /// (what PC firmware leaves it in).
    pub fn new() -> Self {
        Self::with_clock(host_clock)
    }

    /// An RTC following `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        let mut ram = [0; 128];
        ram[usize::from(REG_STATUS_A)] = A_DEFAULT;
        ram[usize::from(REG_STATUS_B)] = B_24H;
        ram[usize::from(REG_CENTURY)] = to_bcd(civil(clock()).year.div_euclid(100));
        Self {
            index: 0,
            ram,
            clock,
        }
    }

    fn read_register(&self, reg: u8) -> u8 {
        let b = self.ram[usize::from(REG_STATUS_B)];
        let encode = |v: i64| {
            if b & B_BINARY != 0 {
                v as u8
            } else {
                to_bcd(v)
            }
        };
        let now = || civil((self.clock)());
        match reg {
            REG_SECONDS => encode(now().second),
            REG_MINUTES => encode(now().minute),
            REG_HOURS => {
                let hour = now().hour;
                if b & B_24H != 0 {
                    encode(hour)
                } else {
                    // 12, 1, ..., 11 with the PM flag from noon.
                    let pm = if hour >= 12 { HOURS_PM } else { 0 };
                    encode((hour + 11) % 12 + 1) | pm
                }
            }
            REG_DAY_OF_WEEK => encode(now().weekday),
            REG_DAY_OF_MONTH => encode(now().day),
            REG_MONTH => encode(now().month),
            REG_YEAR => encode(now().year.rem_euclid(100)),
            REG_STATUS_A => self.ram[usize::from(reg)] & !A_UIP,
            // No interrupt sources: nothing is ever pending.
            REG_STATUS_C => 0,
            REG_STATUS_D => D_VRT,
            _ => self.ram[usize::from(reg)],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            // The clock is the host's: a guest setting it changes nothing
            // (and a sandbox has no business moving the host's clock).
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_WEEK | REG_DAY_OF_MONTH
            | REG_MONTH | REG_YEAR => {}
            REG_STATUS_A => self.ram[usize::from(reg)] = value & !A_UIP,
            REG_STATUS_C | REG_STATUS_D => {}
            _ => self.ram[usize::from(reg)] = value,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (1, [byte]) => *byte = self.read_register(self.index),
            // The index port is write-only.
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [byte]) => self.index = byte & INDEX_MASK,
            (1, [byte]) => self.write_register(self.index, *byte),
            _ => {}
        }
    }
}

fn to_bcd(v: i64) -> u8 {
    let v = v.rem_euclid(100) as u8;
    (v / 10) << 4 | (v % 10)
}

/// A UTC date and time, fields as the RTC counts them.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    /// 1..=12.
    month: i64,
    /// 1..=31.
    day: i64,
    /// 1 = Sunday ..= 7 = Saturday.
    weekday: i64,
    hour: i64,
    minute: i64,
    second: i64,
}

/// Splits Unix time into the proleptic Gregorian calendar (UTC).
fn civil(unix: i64) -> Civil {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Count from 0000-03-01 so that the leap day ends each 4/100/400-year
    // cycle; an era is 400 years = 146097 days.
    let from_march = days + 719_468;
    let era = from_march.div_euclid(146_097);
    let day_of_era = from_march.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March, each run of five alternating 31/30 (153 days).
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        // 1970-01-01 was a Thursday (5).
        weekday: (days + 4).rem_euclid(7) + 1,
        hour: secs / 3600,
        minute: secs / 60 % 60,
        second: secs % 60,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29 13:05:09 UTC, a Thursday.
    const LEAP_DAY_AFTERNOON: i64 = 1_709_211_909;

    fn cmos_at_leap_day() -> Cmos {
        Cmos::with_clock(|| LEAP_DAY_AFTERNOON)
    }

    fn read(cmos: &mut Cmos, reg: u8) -> u8 {
        cmos.write(0, &[reg]);
        let mut byte = [0];
        cmos.read(1, &mut byte);
        byte[0]
    }

    fn write(cmos: &mut Cmos, reg: u8, value: u8) {
        cmos.write(0, &[reg]);
        cmos.write(1, &[value]);
    }

    #[test]
    fn civil_dates_of_known_instants() {
        let c = civil(0);
        assert_eq!((c.year, c.month, c.day, c.weekday), (1970, 1, 1, 5));
        let c = civil(LEAP_DAY_AFTERNOON);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.second, c.weekday),
            (2024, 2, 29, 13, 5, 9, 5)
        );
        // 2000-03-01 00:00:00, a Wednesday, the day after a 400-year leap day.
        let c = civil(951_868_800);
        assert_eq!((c.year, c.month, c.day, c.weekday), (2000, 3, 1, 4));
        // 2099-12-31 23:59:59, a Thursday.
        let c = civil(4_102_444_799);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.second, c.weekday),
            (2099, 12, 31, 23, 59, 59, 5)
        );
    }

    #[test]
    fn time_and_date_read_in_bcd_24h_by_default() {
        let mut cmos = cmos_at_leap_day();
        let got: Vec<u8> = [0, 2, 4, 6, 7, 8, 9]
            .iter()
            .map(|&r| read(&mut cmos, r))
            .collect();
        assert_eq!(got, [0x09, 0x05, 0x13, 0x05, 0x29, 0x02, 0x24]);
        assert_eq!(read(&mut cmos, REG_CENTURY), 0x20);
    }

    #[test]
    fn status_b_selects_binary_and_12_hour_mode() {
        let mut cmos = cmos_at_leap_day();
        write(&mut cmos, REG_STATUS_B, B_BINARY | B_24H);
        assert_eq!(read(&mut cmos, REG_STATUS_B), B_BINARY | B_24H);
        assert_eq!(read(&mut cmos, REG_HOURS), 13);
        assert_eq!(read(&mut cmos, REG_DAY_OF_MONTH), 29);
        assert_eq!(read(&mut cmos, REG_YEAR), 24);
        write(&mut cmos, REG_STATUS_B, B_BINARY);
        assert_eq!(read(&mut cmos, REG_HOURS), HOURS_PM | 1);
        write(&mut cmos, REG_STATUS_B, 0);
        assert_eq!(read(&mut cmos, REG_HOURS), HOURS_PM | 0x01);
        let mut midnight = Cmos::with_clock(|| 30);
        write(&mut midnight, REG_STATUS_B, 0);
        assert_eq!(read(&mut midnight, REG_HOURS), 0x12, "12 AM");
    }

    #[test]
    fn status_registers_never_show_an_update_and_report_valid_time() {
        let mut cmos = cmos_at_leap_day();
        assert_eq!(read(&mut cmos, REG_STATUS_A), A_DEFAULT);
        write(&mut cmos, REG_STATUS_A, 0xff);
        assert_eq!(read(&mut cmos, REG_STATUS_A) & A_UIP, 0);
        assert_eq!(read(&mut cmos, REG_STATUS_A), 0x7f, "other A bits kept");
        assert_eq!(read(&mut cmos, REG_STATUS_C), 0);
        write(&mut cmos, REG_STATUS_D, 0);
        assert_eq!(read(&mut cmos, REG_STATUS_D), D_VRT);
    }

    #[test]
    fn other_bytes_are_ram_and_the_clock_ignores_writes() {
        let mut cmos = cmos_at_leap_day();
        for reg in [0x01, 0x0e, 0x10, 0x32, 0x7f] {
            write(&mut cmos, reg, 0xa5 ^ reg);
        }
        for reg in [0x01, 0x0e, 0x10, 0x32, 0x7f] {
            assert_eq!(read(&mut cmos, reg), 0xa5 ^ reg, "register {reg:#x}");
        }
        write(&mut cmos, REG_SECONDS, 0x42);
        assert_eq!(read(&mut cmos, REG_SECONDS), 0x09);
    }

    #[test]
    fn nmi_mask_bit_of_the_index_is_ignored() {
        let mut cmos = cmos_at_leap_day();
        write(&mut cmos, 0x80 | 0x20, 0x5a);
        assert_eq!(read(&mut cmos, 0x20), 0x5a);
        assert_eq!(read(&mut cmos, 0x80 | REG_MINUTES), 0x05);
        let mut byte = [0];
        cmos.read(0, &mut byte);
        assert_eq!(byte, [0xff], "index port reads as open bus");
    }
}

//! Maintenance windows: days of the week and a time of day in an IANA time zone. A window
//! whose `end` is before its `start` runs past midnight and belongs to the day it starts on;
//! `start == end` is the whole day. No windows: always open. Daylight-saving gaps resolve as
//! the clocks do (a 02:30 start on the spring-forward night opens at 03:30).

use crate::error::{FleetError, Result};
use aptgate_config::WindowConfig;
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::Timestamp;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Debug, Clone)]
pub struct Window {
    /// Monday = bit 0.
    days: u8,
    start: Time,
    end: Time,
    tz: TimeZone,
}

fn bad(what: &str, text: &str, hint: &str) -> FleetError {
    FleetError::bad_request(
        "bad_window",
        format!("invalid window {what} {text:?}\nhint: {hint}"),
    )
}

fn day(text: &str) -> Option<u8> {
    DAYS.iter()
        .position(|d| text.eq_ignore_ascii_case(d))
        .map(|i| i as u8)
}

/// `mon-fri`, `sat,sun`, `fri-mon` (wraps), `*`.
fn parse_days(text: &str) -> Result<u8> {
    let hint = "days like \"mon-fri\", \"sat,sun\" or \"*\"";
    if text.trim() == "*" {
        return Ok(0x7f);
    }
    let mut mask = 0u8;
    for part in text.split(',').map(str::trim) {
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (day(a.trim()), day(b.trim())),
            None => (day(part), day(part)),
        };
        let (Some(from), Some(to)) = (from, to) else {
            return Err(bad("days", text, hint));
        };
        let mut d = from;
        loop {
            mask |= 1 << d;
            if d == to {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(mask)
}

fn parse_time(text: &str) -> Result<Time> {
    let hint = "times are HH:MM, 24-hour (\"01:00\", \"23:30\")";
    let (h, m) = text
        .split_once(':')
        .ok_or_else(|| bad("time", text, hint))?;
    let (Ok(h), Ok(m)) = (h.parse::<i8>(), m.parse::<i8>()) else {
        return Err(bad("time", text, hint));
    };
    Time::new(h, m, 0, 0).map_err(|_| bad("time", text, hint))
}

impl Window {
    pub fn parse(c: &WindowConfig) -> Result<Self> {
        let tz = TimeZone::get(&c.time_zone).map_err(|_| {
            bad(
                "time zone",
                &c.time_zone,
                "an IANA time zone name like \"Europe/Berlin\" or \"UTC\"",
            )
        })?;
        Ok(Self {
            days: parse_days(&c.days)?,
            start: parse_time(&c.start)?,
            end: parse_time(&c.end)?,
            tz,
        })
    }

    fn on(&self, date: Date) -> bool {
        self.days & (1 << date.weekday().to_monday_zero_offset()) != 0
    }

    /// Whether the window is open at `now` (unix seconds).
    pub fn is_open(&self, now: i64) -> bool {
        let Ok(ts) = Timestamp::from_second(now) else {
            return false;
        };
        let local = ts.to_zoned_datetime(self.tz.clone());
        let (date, time) = (local.date(), local.time());
        if self.start == self.end {
            return self.on(date);
        }
        if self.start < self.end {
            return self.on(date) && self.start <= time && time < self.end;
        }
        // Past midnight: the evening part today, or the morning part of yesterday's window.
        (self.on(date) && time >= self.start)
            || (time < self.end && date.yesterday().is_ok_and(|y| self.on(y)))
    }

    /// When the window next opens after `now` (unix seconds).
    pub fn next_open(&self, now: i64) -> Option<i64> {
        let ts = Timestamp::from_second(now).ok()?;
        let mut date = ts.to_zoned_datetime(self.tz.clone()).date();
        for _ in 0..9 {
            if self.on(date) {
                let at = date
                    .to_datetime(self.start)
                    .to_zoned_datetime(self.tz.clone())
                    .ok()?
                    .timestamp()
                    .as_second();
                if at > now {
                    return Some(at);
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// Whether any window is open (no windows: always), and if not, when the first one opens.
pub fn open_at(windows: &[Window], now: i64) -> (bool, Option<i64>) {
    if windows.is_empty() || windows.iter().any(|w| w.is_open(now)) {
        return (true, None);
    }
    (false, windows.iter().filter_map(|w| w.next_open(now)).min())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &str, start: &str, end: &str, tz: &str) -> Window {
        Window::parse(&WindowConfig {
            days: days.into(),
            start: start.into(),
            end: end.into(),
            time_zone: tz.into(),
        })
        .unwrap()
    }

    fn at(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn a_weekday_window_opens_in_its_own_time_zone() {
        // 2024-06-03 is a Monday; Berlin is UTC+2 in June.
        let w = window("mon-fri", "01:00", "05:00", "Europe/Berlin");
        assert!(w.is_open(at("2024-06-03T00:30:00Z")));
        assert!(!w.is_open(at("2024-06-03T03:00:00Z")));
        assert!(!w.is_open(at("2024-06-02T00:30:00Z")), "a Sunday");
        assert_eq!(
            w.next_open(at("2024-06-03T03:00:00Z")),
            Some(at("2024-06-03T23:00:00Z"))
        );
        assert_eq!(
            w.next_open(at("2024-06-07T03:00:00Z")),
            Some(at("2024-06-09T23:00:00Z")),
            "Friday after the window: Monday next"
        );
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        let w = window("fri", "22:00", "02:00", "UTC");
        assert!(w.is_open(at("2024-06-07T23:00:00Z")), "Friday night");
        assert!(w.is_open(at("2024-06-08T01:00:00Z")), "early Saturday");
        assert!(!w.is_open(at("2024-06-08T23:00:00Z")), "Saturday night");
        assert!(!w.is_open(at("2024-06-07T01:00:00Z")), "early Friday");
    }

    #[test]
    fn days_wrap_and_list_and_bad_input_is_refused() {
        assert_eq!(parse_days("*").unwrap(), 0x7f);
        assert_eq!(parse_days("sat,sun").unwrap(), 0b110_0000);
        assert_eq!(parse_days("fri-mon").unwrap(), 0b111_0001);
        assert_eq!(parse_days("Mon-Fri").unwrap(), 0b001_1111);
        for bad in ["", "monday", "mon-", "mon-xyz"] {
            assert!(parse_days(bad).is_err(), "{bad}");
        }
        for bad in ["1", "25:00", "01:60", "x:y"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert!(Window::parse(&WindowConfig {
            days: "*".into(),
            start: "01:00".into(),
            end: "02:00".into(),
            time_zone: "Mars/Olympus".into(),
        })
        .is_err());
        let (open, next) = open_at(&[], 0);
        assert!(open && next.is_none());
    }
}

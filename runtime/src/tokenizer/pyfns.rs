//! The Python helpers transformers adds to its chat-template Jinja environment, re-implemented for
//! minijinja: `tojson` (Python `json.dumps`, not Jinja's HTML-escaping filter) and `strftime_now`.
//!
//! Source: transformers v5.23.0 `utils/chat_template_utils.py` `_cached_compile_jinja_template`:
//! `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)` returns
//! `json.dumps(...)`, and `strftime_now(format)` returns `datetime.now().strftime(format)`.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// `x | tojson(indent=.., ensure_ascii=.., sort_keys=.., separators=(item, key))` as `json.dumps`.
pub(crate) fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let opts = JsonOpts {
        indent,
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        // json.dumps: (', ', ': ') without indent, (',', ': ') with one.
        seps: match kwargs.get::<Option<Vec<String>>>("separators")? {
            Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
            Some(_) => return Err(Error::new(ErrorKind::InvalidOperation, "separators must be a pair")),
            None if indent.is_some() => (",".into(), ": ".into()),
            None => (", ".into(), ": ".into()),
        },
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(out)
}

struct JsonOpts {
    indent: Option<usize>,
    ensure_ascii: bool,
    sort_keys: bool,
    seps: (String, String),
}

fn write_json(out: &mut String, v: &Value, o: &JsonOpts, level: usize) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => write!(out, "{v}").map_err(fmt_err)?,
        ValueKind::Number => out.push_str(&py_float(f64::try_from(v.clone())?)),
        ValueKind::String => write_str(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, o, level, ('[', ']'), &items, |out, item| {
                write_json(out, item, o, level + 1)
            })?;
        }
        ValueKind::Map => {
            let mut items: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let name = match key.as_str() {
                    Some(s) => s.to_owned(),
                    None => {
                        let mut s = String::new();
                        write_json(&mut s, &key, o, 0)?;
                        s
                    }
                };
                items.push((name, v.get_item(&key)?));
            }
            if o.sort_keys {
                items.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, o, level, ('{', '}'), &items, |out, (k, item)| {
                write_str(out, k, o.ensure_ascii);
                out.push_str(&o.seps.1);
                write_json(out, item, o, level + 1)
            })?;
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {other}"),
            ))
        }
    }
    Ok(())
}

/// `[a, b]` / `{..}` with json.dumps' separators and indentation rules.
fn write_container<T>(
    out: &mut String,
    o: &JsonOpts,
    level: usize,
    (open, close): (char, char),
    items: &[T],
    mut each: impl FnMut(&mut String, &T) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = o.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&o.seps.0);
        }
        newline(out, level + 1);
        each(out, item)?;
    }
    newline(out, level);
    out.push(close);
    Ok(())
}

/// A JSON string literal as Python's json encoder writes it.
fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python `float.__repr__`: shortest round-trip digits, scientific outside 1e-4 <= |x| < 1e16.
fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if x == 0.0 || (-4..16).contains(&exp) {
        let plain = format!("{x}");
        if plain.contains('.') {
            plain
        } else {
            plain + ".0"
        }
    } else {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

fn fmt_err(e: std::fmt::Error) -> Error {
    Error::new(ErrorKind::InvalidOperation, e.to_string())
}

/// `strftime_now(format)`: the current time formatted with C `strftime` directives. The clock is
/// UTC (the reference uses the local zone; the FLUX.2 prompts never contain the date).
pub(crate) fn strftime_now(format: &str) -> Result<String, Error> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    strftime(format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// Formats a Unix time (UTC) with the common `strftime` directives.
pub(crate) fn strftime(format: &str, unix_secs: i64) -> Result<String, Error> {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let d = chars.next().ok_or_else(|| bad_directive(format, "%"))?;
        let month_name = MONTHS[(month - 1) as usize];
        let _ = match d {
            'Y' => write!(out, "{year}"),
            'y' => write!(out, "{:02}", year.rem_euclid(100)),
            'm' => write!(out, "{month:02}"),
            'd' => write!(out, "{day:02}"),
            'e' => write!(out, "{day:2}"),
            'H' => write!(out, "{hour:02}"),
            'I' => write!(out, "{:02}", (hour + 11) % 12 + 1),
            'p' => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            'M' => write!(out, "{minute:02}"),
            'S' => write!(out, "{second:02}"),
            'j' => write!(out, "{yday:03}"),
            'B' => write!(out, "{month_name}"),
            'b' | 'h' => write!(out, "{}", &month_name[..3]),
            'A' => write!(out, "{}", DAYS[weekday]),
            'a' => write!(out, "{}", &DAYS[weekday][..3]),
            'w' => write!(out, "{weekday}"),
            'F' => write!(out, "{year}-{month:02}-{day:02}"),
            'T' => write!(out, "{hour:02}:{minute:02}:{second:02}"),
            'Z' => write!(out, "UTC"),
            'z' => write!(out, "+0000"),
            '%' => write!(out, "%"),
            other => return Err(bad_directive(format, &format!("%{other}"))),
        };
    }
    Ok(out)
}

fn bad_directive(format: &str, d: &str) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("strftime_now(\"{format}\"): unsupported directive {d}"))
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Day count since 1970-01-01 of a civil date (inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_python() {
        // python: datetime.utcfromtimestamp(1709251199).strftime(...) -> 2024-02-29 23:59:59, Thursday
        let s = strftime("%Y-%m-%d %H:%M:%S %A %a %B %b %j %y %I%p", 1_709_251_199).unwrap();
        assert_eq!(s, "2024-02-29 23:59:59 Thursday Thu February Feb 060 24 11PM");
        assert!(strftime("%Q", 0).unwrap_err().to_string().contains("%Q"));
    }

    #[test]
    fn floats_like_python_repr() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.1), "0.1");
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(1.5e16), "1.5e+16");
        assert_eq!(py_float(123456.75), "123456.75");
    }
}

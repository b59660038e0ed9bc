//! Tensor shapes with named symbolic dimensions (`B`, `S`, `L`, `H`, ...).
//!
//! A dimension is either a known size or a symbol. Ops derive new symbols as readable
//! expressions (`L+S`, `H/2`); two different symbols never compare equal, which is how
//! shape mismatches are caught when a node is wired.

use std::fmt;

/// One dimension of a shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(i64),
    Sym(String),
}

/// A tensor shape.
pub type Shape = Vec<Dim>;

impl Dim {
    pub fn sym(s: &str) -> Dim {
        Dim::Sym(s.to_string())
    }

    pub fn fixed(&self) -> Option<i64> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    fn wrap(&self) -> String {
        match self {
            Dim::Fixed(n) => n.to_string(),
            Dim::Sym(s) if s.chars().all(|c| c.is_alphanumeric() || c == '_') => s.clone(),
            Dim::Sym(s) => format!("({s})"),
        }
    }

    /// `self + other`.
    pub fn add(&self, other: &Dim) -> Dim {
        match (self, other) {
            (Dim::Fixed(a), Dim::Fixed(b)) => Dim::Fixed(a + b),
            (a, Dim::Fixed(0)) | (Dim::Fixed(0), a) => a.clone(),
            (a, b) => Dim::Sym(format!("{}+{}", a, b)),
        }
    }

    /// `self * k`.
    pub fn mul(&self, other: &Dim) -> Dim {
        match (self, other) {
            (Dim::Fixed(a), Dim::Fixed(b)) => Dim::Fixed(a * b),
            (a, Dim::Fixed(1)) | (Dim::Fixed(1), a) => a.clone(),
            // `2 * (H/2)` -> `H` (the exact division [`Dim::div`] assumes)
            (Dim::Sym(s), Dim::Fixed(k)) | (Dim::Fixed(k), Dim::Sym(s))
                if s.strip_suffix(&format!("/{k}")).is_some_and(|x| unwrap_group(x).is_some()) =>
            {
                let x = s.strip_suffix(&format!("/{k}")).and_then(unwrap_group).unwrap_or(s);
                Dim::Sym(x.to_string())
            }
            (a, b) => Dim::Sym(format!("{}*{}", a.wrap(), b.wrap())),
        }
    }

    /// `self / k` (exact division assumed for symbols, floor for known sizes).
    pub fn div(&self, k: i64) -> Dim {
        match self {
            Dim::Fixed(a) => Dim::Fixed(a / k),
            _ if k == 1 => self.clone(),
            Dim::Sym(s) => {
                // `2*H` / 2 -> `H`
                if let Some(rest) = s.strip_prefix(&format!("{k}*")) {
                    if rest.chars().all(|c| c.is_alphanumeric() || c == '_') {
                        return Dim::Sym(rest.to_string());
                    }
                }
                Dim::Sym(format!("{}/{}", self.wrap(), k))
            }
        }
    }
}

/// `X` for a symbol written as one group: a plain name, or `(X)` with balanced parentheses.
fn unwrap_group(s: &str) -> Option<&str> {
    if !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return Some(s);
    }
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    let mut depth = 0i32;
    for c in inner.chars() {
        depth += match c {
            '(' => 1,
            ')' => -1,
            _ => 0,
        };
        if depth < 0 {
            return None; // `(A)+(B)`: the outer parentheses are two groups
        }
    }
    (depth == 0).then_some(inner)
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

impl From<i64> for Dim {
    fn from(n: i64) -> Dim {
        Dim::Fixed(n)
    }
}

impl From<i32> for Dim {
    fn from(n: i32) -> Dim {
        Dim::Fixed(n as i64)
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n as i64)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::Sym(s.to_string())
    }
}

/// Formats a shape as `[B,S,128]`.
pub fn show(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(","))
}

/// Builds a shape from anything convertible to [`Dim`]: `shape![ "B", 3, "H" ]`.
#[macro_export]
macro_rules! shape {
    ($($d:expr),* $(,)?) => { vec![$($crate::Dim::from($d)),*] };
}

/// Numpy broadcasting of two shapes; `None` when they cannot broadcast.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Option<Shape> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = if i + a.len() >= n { Some(&a[i + a.len() - n]) } else { None };
        let db = if i + b.len() >= n { Some(&b[i + b.len() - n]) } else { None };
        let d = match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(Dim::Fixed(1)), Some(y)) => y.clone(),
            (Some(x), Some(Dim::Fixed(1))) => x.clone(),
            // a symbol against a known size: trust the known size (checked at run time)
            (Some(Dim::Sym(_)), Some(y @ Dim::Fixed(_))) => y.clone(),
            (Some(x @ Dim::Fixed(_)), Some(Dim::Sym(_))) => x.clone(),
            _ => return None,
        };
        out.push(d);
    }
    Some(out)
}

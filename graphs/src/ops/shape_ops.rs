//! Shape manipulation: reshape, transpose, concat, slice, split, (un)squeeze, gather,
//! pad, resize and the depth/space rearrangements used for latent patchify.

use crate::{attr, show_shape, DType, Dim, Graph, Result, Shape, T};

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

impl Graph {
    /// Reshape with a constant spec: `0` keeps the input dim at that index, `-1` infers one dim.
    pub fn reshape(&self, x: T, spec: &[i64]) -> Result<T> {
        let ins = self.shape_of(x);
        let mut out: Shape = Vec::with_capacity(spec.len());
        let mut infer = None;
        for (i, &s) in spec.iter().enumerate() {
            match s {
                0 => out.push(ins.get(i).cloned().ok_or_else(|| self.err("Reshape", "0 beyond input rank"))?),
                -1 if infer.is_none() => {
                    infer = Some(i);
                    out.push(Dim::Fixed(-1));
                }
                n if n > 0 => out.push(Dim::Fixed(n)),
                _ => return Err(self.err("Reshape", format!("bad spec {spec:?}"))),
            }
        }
        if let Some(i) = infer {
            out[i] = infer_dim(&ins, &out, i).ok_or_else(|| {
                self.err("Reshape", format!("cannot reshape {} to {spec:?}", show_shape(&ins)))
            })?;
        } else if numel_differs(&ins, &out) {
            return Err(self.err("Reshape", format!("cannot reshape {} to {spec:?}", show_shape(&ins))));
        }
        let shape = self.ints(spec);
        Ok(self.node1("Reshape", &[x, shape], vec![], self.dtype_of(x), out))
    }

    /// Reshape `x` to the (run-time) shape of `like`.
    pub fn reshape_like(&self, x: T, like: T) -> Result<T> {
        let s = self.shape(like);
        Ok(self.node1("Reshape", &[x, s], vec![], self.dtype_of(x), self.shape_of(like)))
    }

    /// The run-time shape of `x` as int64 [rank].
    pub fn shape(&self, x: T) -> T {
        let r = self.rank(x);
        self.node1("Shape", &[x], vec![], DType::I64, vec![Dim::Fixed(r as i64)])
    }

    /// Permutes axes.
    pub fn transpose(&self, x: T, perm: &[usize]) -> Result<T> {
        let s = self.shape_of(x);
        if perm.len() != s.len() || (0..s.len()).any(|i| !perm.contains(&i)) {
            return Err(self.err("Transpose", format!("perm {perm:?} invalid for {}", show_shape(&s))));
        }
        let out = perm.iter().map(|&p| s[p].clone()).collect();
        let p: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
        Ok(self.node1("Transpose", &[x], vec![attr::ints("perm", &p)], self.dtype_of(x), out))
    }

    /// Concatenates along `axis`.
    pub fn concat(&self, xs: &[T], axis: i64) -> Result<T> {
        let first = *xs.first().ok_or_else(|| self.err("Concat", "no inputs"))?;
        let s0 = self.shape_of(first);
        let ax = norm_axis(axis, s0.len()).ok_or_else(|| self.err("Concat", "axis out of range"))?;
        let mut out = s0.clone();
        for &x in &xs[1..] {
            let s = self.shape_of(x);
            if s.len() != s0.len() || self.dtype_of(x) != self.dtype_of(first) {
                return Err(self.err("Concat", format!("{} vs {}", show_shape(&s0), show_shape(&s))));
            }
            for i in 0..s.len() {
                if i != ax && s[i] != s0[i] && s[i].fixed().is_some() && s0[i].fixed().is_some() {
                    return Err(self
                        .err("Concat", format!("{} vs {} off axis {ax}", show_shape(&s0), show_shape(&s))));
                }
            }
            out[ax] = out[ax].add(&s[ax]);
        }
        Ok(self.node1("Concat", xs, vec![attr::int("axis", ax as i64)], self.dtype_of(first), out))
    }

    /// `x[.., start:end, ..]` along `axis` (`end` may be `i64::MAX`; negatives count from the end).
    pub fn slice(&self, x: T, axis: i64, start: i64, end: i64) -> Result<T> {
        let s = self.shape_of(x);
        let ax = norm_axis(axis, s.len()).ok_or_else(|| self.err("Slice", "axis out of range"))?;
        let mut out = s.clone();
        out[ax] = match &s[ax] {
            Dim::Fixed(n) => {
                let clamp = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(*n) };
                Dim::Fixed((clamp(end) - clamp(start)).max(0))
            }
            _ if start >= 0 && end >= 0 && end != i64::MAX => Dim::Fixed((end - start).max(0)),
            d if end == i64::MAX && start == 0 => d.clone(),
            d if end == i64::MAX && start > 0 => d.add(&Dim::Fixed(-start)),
            d => Dim::Sym(format!("slice({d})")),
        };
        let (st, en, ax_t) = (self.ints(&[start]), self.ints(&[end]), self.ints(&[ax as i64]));
        Ok(self.node1("Slice", &[x, st, en, ax_t], vec![], self.dtype_of(x), out))
    }

    /// `x[.., start:end, ..]` along `axis` with run-time bounds (int64 `[1]` tensors, e.g. a
    /// sequence length read with [`Graph::shape`]); `dim` names the result's size on that axis.
    pub fn slice_dyn(&self, x: T, axis: i64, start: T, end: T, dim: Dim) -> Result<T> {
        let s = self.shape_of(x);
        let ax = norm_axis(axis, s.len()).ok_or_else(|| self.err("Slice", "axis out of range"))?;
        for b in [start, end] {
            if self.dtype_of(b) != DType::I64 || self.shape_of(b) != [Dim::Fixed(1)] {
                return Err(self.err("Slice", "run-time bounds must be int64 [1]"));
            }
        }
        let mut out = s.clone();
        out[ax] = dim;
        let ax_t = self.ints(&[ax as i64]);
        Ok(self.node1("Slice", &[x, start, end, ax_t], vec![], self.dtype_of(x), out))
    }

    /// Splits along `axis` into pieces of the given sizes.
    pub fn split(&self, x: T, axis: i64, sizes: &[i64]) -> Result<Vec<T>> {
        let s = self.shape_of(x);
        let ax = norm_axis(axis, s.len()).ok_or_else(|| self.err("Split", "axis out of range"))?;
        if sizes.iter().any(|&n| n < 0) {
            return Err(self.err("Split", format!("negative size in {sizes:?}")));
        }
        if let Dim::Fixed(n) = s[ax] {
            if sizes.iter().sum::<i64>() != n {
                return Err(self.err("Split", format!("sizes {sizes:?} do not sum to {n}")));
            }
        }
        let outs = sizes
            .iter()
            .map(|&n| {
                let mut o = s.clone();
                o[ax] = Dim::Fixed(n);
                (self.dtype_of(x), o)
            })
            .collect();
        let split = self.ints(sizes);
        Ok(self.node("Split", "", &[Some(x), Some(split)], vec![attr::int("axis", ax as i64)], outs))
    }

    /// Inserts size-1 axes.
    pub fn unsqueeze(&self, x: T, axes: &[i64]) -> Result<T> {
        let s = self.shape_of(x);
        let r = s.len() + axes.len();
        let mut ax: Vec<usize> = axes
            .iter()
            .map(|&a| norm_axis(a, r))
            .collect::<Option<_>>()
            .ok_or_else(|| self.err("Unsqueeze", "axis"))?;
        ax.sort();
        let mut out = Vec::with_capacity(r);
        let mut it = s.into_iter();
        for i in 0..r {
            if ax.contains(&i) {
                out.push(Dim::Fixed(1));
            } else {
                out.push(it.next().ok_or_else(|| self.err("Unsqueeze", "axis"))?);
            }
        }
        let a = self.ints(axes);
        Ok(self.node1("Unsqueeze", &[x, a], vec![], self.dtype_of(x), out))
    }

    /// Removes size-1 axes.
    pub fn squeeze(&self, x: T, axes: &[i64]) -> Result<T> {
        let s = self.shape_of(x);
        let ax: Vec<usize> = axes
            .iter()
            .map(|&a| norm_axis(a, s.len()))
            .collect::<Option<_>>()
            .ok_or_else(|| self.err("Squeeze", "axis"))?;
        if let Some(&a) = ax.iter().find(|&&a| s[a].fixed().is_some_and(|n| n != 1)) {
            return Err(self.err("Squeeze", format!("axis {a} of {} is not 1", show_shape(&s))));
        }
        let out = s.iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, d)| d.clone()).collect();
        let a = self.ints(axes);
        Ok(self.node1("Squeeze", &[x, a], vec![], self.dtype_of(x), out))
    }

    /// `x.take(indices, axis)`.
    pub fn gather(&self, x: T, indices: T, axis: i64) -> Result<T> {
        let s = self.shape_of(x);
        let ax = norm_axis(axis, s.len()).ok_or_else(|| self.err("Gather", "axis out of range"))?;
        let mut out: Shape = s[..ax].to_vec();
        out.extend(self.shape_of(indices));
        out.extend(s[ax + 1..].iter().cloned());
        Ok(self.node1("Gather", &[x, indices], vec![attr::int("axis", ax as i64)], self.dtype_of(x), out))
    }

    /// Broadcasts `x` to the run-time shape `shape` (int64 1-D) whose symbolic form is `out`.
    pub fn expand(&self, x: T, shape: T, out: Shape) -> T {
        self.node1("Expand", &[x, shape], vec![], self.dtype_of(x), out)
    }

    /// Constant zero padding of the last two axes: `(top, bottom, left, right)`.
    pub fn pad2d(&self, x: T, top: i64, bottom: i64, left: i64, right: i64) -> Result<T> {
        let s = self.shape_of(x);
        if s.len() != 4 {
            return Err(self.err("Pad", "expects NCHW"));
        }
        let pads = self.ints(&[0, 0, top, left, 0, 0, bottom, right]);
        let mut out = s.clone();
        out[2] = s[2].add(&Dim::Fixed(top + bottom));
        out[3] = s[3].add(&Dim::Fixed(left + right));
        Ok(self.node1("Pad", &[x, pads], vec![attr::string("mode", "constant")], self.dtype_of(x), out))
    }

    /// Nearest-neighbour ×2 upsampling of NCHW (torch `interpolate(scale_factor=2, mode="nearest")`).
    pub fn upsample_nearest2x(&self, x: T) -> Result<T> {
        let s = self.shape_of(x);
        if s.len() != 4 {
            return Err(self.err("Resize", "expects NCHW"));
        }
        let scales = self.const_float(DType::F32, &[4], &[1.0, 1.0, 2.0, 2.0]);
        let mut out = s.clone();
        out[2] = Dim::Fixed(2).mul(&s[2]);
        out[3] = Dim::Fixed(2).mul(&s[3]);
        let attrs = vec![
            attr::string("mode", "nearest"),
            attr::string("coordinate_transformation_mode", "asymmetric"),
            attr::string("nearest_mode", "floor"),
        ];
        let ins = [Some(x), None, Some(scales)];
        Ok(self.node("Resize", "", &ins, attrs, vec![(self.dtype_of(x), out)])[0])
    }

    /// DepthToSpace (CRD): [B, C·b², h, w] -> [B, C, h·b, w·b], channel `c·b² + i·b + j`.
    pub fn depth_to_space_crd(&self, x: T, block: i64) -> Result<T> {
        let s = self.shape_of(x);
        let c =
            s.get(1).and_then(|d| d.fixed()).ok_or_else(|| self.err("DepthToSpace", "channels unknown"))?;
        if s.len() != 4 || block < 1 || c % (block * block) != 0 {
            return Err(self.err("DepthToSpace", format!("bad input {}", show_shape(&s))));
        }
        let out = vec![
            s[0].clone(),
            Dim::Fixed(c / block / block),
            Dim::Fixed(block).mul(&s[2]),
            Dim::Fixed(block).mul(&s[3]),
        ];
        let attrs = vec![attr::int("blocksize", block), attr::string("mode", "CRD")];
        Ok(self.node1("DepthToSpace", &[x], attrs, self.dtype_of(x), out))
    }

    /// SpaceToDepth: [B, C, h·b, w·b] -> [B, b²·C, h, w], channel `(i·b + j)·C + c`.
    pub fn space_to_depth(&self, x: T, block: i64) -> Result<T> {
        let s = self.shape_of(x);
        let c =
            s.get(1).and_then(|d| d.fixed()).ok_or_else(|| self.err("SpaceToDepth", "channels unknown"))?;
        let indivisible = |b: i64| s[2..].iter().any(|d| d.fixed().is_some_and(|n| n % b != 0));
        if s.len() != 4 || block < 1 || indivisible(block) {
            return Err(self.err("SpaceToDepth", format!("bad input {} for block {block}", show_shape(&s))));
        }
        let out = vec![s[0].clone(), Dim::Fixed(c * block * block), s[2].div(block), s[3].div(block)];
        Ok(self.node1("SpaceToDepth", &[x], vec![attr::int("blocksize", block)], self.dtype_of(x), out))
    }
}

fn numel(s: &[Dim]) -> Option<i64> {
    s.iter().map(|d| d.fixed()).product()
}

/// Whether two shapes surely hold different element counts: equal dims cancel, and what is
/// left on both sides must be known sizes (`[B,S,4]` vs `[B,S,5]` differ; `[B,S]` vs `[S,B]`
/// do not; `[B,4]` vs `[S,4]` cannot be told).
fn numel_differs(a: &[Dim], b: &[Dim]) -> bool {
    let mut rest: Vec<&Dim> = a.iter().collect();
    let mut extra = Vec::new();
    for d in b {
        match rest.iter().position(|x| *x == d) {
            Some(p) => {
                rest.remove(p);
            }
            None => extra.push(d.clone()),
        }
    }
    let left: Vec<Dim> = rest.into_iter().cloned().collect();
    matches!((numel(&left), numel(&extra)), (Some(x), Some(y)) if x != y)
}

fn infer_dim(ins: &[Dim], out: &[Dim], at: usize) -> Option<Dim> {
    // Known sizes: divide. Symbolic: cancel equal symbols, multiply what is left.
    let mut num: Vec<Dim> = ins.to_vec();
    let mut den = 1i64;
    for (i, d) in out.iter().enumerate() {
        if i == at {
            continue;
        }
        if let Some(p) = num.iter().position(|x| x == d) {
            num.remove(p);
        } else if let Dim::Fixed(n) = d {
            den *= n;
        } else {
            return None;
        }
    }
    let fixed: i64 = num.iter().filter_map(|d| d.fixed()).product();
    let syms: Vec<&Dim> = num.iter().filter(|d| d.fixed().is_none()).collect();
    if syms.is_empty() {
        return (fixed % den == 0).then_some(Dim::Fixed(fixed / den));
    }
    let mut r = Dim::Fixed(1);
    for s in syms {
        r = r.mul(s);
    }
    if fixed % den == 0 {
        Some(r.mul(&Dim::Fixed(fixed / den)))
    } else if den % fixed == 0 {
        Some(r.div(den / fixed))
    } else {
        None
    }
}

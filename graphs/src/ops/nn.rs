//! Neural-net layers: matmul and bias-optional linear layers over `(out, in)` weights,
//! 2-D convolution, group / layer / RMS normalisation, softmax and reductions.

use crate::{attr, broadcast, show_shape, DType, Dim, Graph, Result, Target, T};

impl Graph {
    /// Batched matrix product with numpy broadcasting of the leading axes.
    pub fn matmul(&self, a: T, b: T) -> Result<T> {
        let (sa, sb) = (self.shape_of(a), self.shape_of(b));
        if sa.len() < 2 || sb.len() < 2 {
            return Err(self.err("MatMul", "inputs must have rank >= 2"));
        }
        let (ka, kb) = (&sa[sa.len() - 1], &sb[sb.len() - 2]);
        if ka != kb && ka.fixed().is_some() && kb.fixed().is_some() {
            return Err(
                self.err("MatMul", format!("{} x {}: inner dims differ", show_shape(&sa), show_shape(&sb)))
            );
        }
        if self.dtype_of(a) != self.dtype_of(b) {
            return Err(
                self.err("MatMul", format!("dtypes differ: {} vs {}", self.dtype_of(a), self.dtype_of(b)))
            );
        }
        let mut out = broadcast(&sa[..sa.len() - 2], &sb[..sb.len() - 2]).ok_or_else(|| {
            self.err("MatMul", format!("batch dims of {} and {} differ", show_shape(&sa), show_shape(&sb)))
        })?;
        out.push(sa[sa.len() - 2].clone());
        out.push(sb[sb.len() - 1].clone());
        Ok(self.node1("MatMul", &[a, b], vec![], self.dtype_of(a), out))
    }

    /// `x @ W^T (+ b)` with the weight `scope.{name}.weight` stored `(out, in)` as in the checkpoint.
    pub fn linear(&self, x: T, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<T> {
        let s = self.shape_of(x);
        if s.last() != Some(&Dim::Fixed(d_in as i64)) {
            return Err(
                self.err("MatMul", format!("{name}: input {} does not end in {d_in}", show_shape(&s)))
            );
        }
        let w = self.weight(&format!("{name}.weight"), &[d_out, d_in])?;
        let wt = self.transpose(w, &[1, 0])?; // [in, out]
        let y = self.matmul(x, wt)?;
        if bias {
            let b = self.weight(&format!("{name}.bias"), &[d_out])?;
            self.add(y, b)
        } else {
            Ok(y)
        }
    }

    /// 2-D convolution (NCHW), `(cin, cout)` channels, with weight `scope.{name}.weight` [cout, cin, k, k] and bias.
    pub fn conv2d(
        &self,
        x: T,
        name: &str,
        (cin, cout): (usize, usize),
        k: usize,
        stride: i64,
        pad: i64,
    ) -> Result<T> {
        let s = self.shape_of(x);
        if s.len() != 4 || s[1] != Dim::Fixed(cin as i64) {
            return Err(self.err("Conv", format!("{name}: input {} is not [B,{cin},H,W]", show_shape(&s))));
        }
        let too_small = s[2..].iter().any(|d| d.fixed().is_some_and(|n| n + 2 * pad < k as i64));
        if stride < 1 || pad < 0 || too_small {
            return Err(self.err(
                "Conv",
                format!("{name}: input {} with kernel {k}, stride {stride}, pad {pad}", show_shape(&s)),
            ));
        }
        let w = self.weight(&format!("{name}.weight"), &[cout, cin, k, k])?;
        let b = self.weight(&format!("{name}.bias"), &[cout])?;
        let od = |d: &Dim| conv_dim(d, k as i64, stride, pad);
        let out = vec![s[0].clone(), Dim::Fixed(cout as i64), od(&s[2]), od(&s[3])];
        let attrs = vec![
            attr::ints("kernel_shape", &[k as i64, k as i64]),
            attr::ints("strides", &[stride, stride]),
            attr::ints("pads", &[pad, pad, pad, pad]),
        ];
        Ok(self.node1("Conv", &[x, w, b], attrs, self.dtype_of(x), out))
    }

    /// GroupNorm over NCHW with affine weight/bias `scope.{name}.{weight,bias}` [C].
    ///
    /// Emitted as Reshape [B,G,-1] -> InstanceNormalization -> Reshape -> affine, which both
    /// ONNX Runtime and TensorRT run natively (opset-21 GroupNormalization is expanded by ORT).
    pub fn group_norm(&self, x: T, name: &str, groups: usize, channels: usize, eps: f32) -> Result<T> {
        let s = self.shape_of(x);
        if s.len() < 3
            || s[1] != Dim::Fixed(channels as i64)
            || groups == 0
            || !channels.is_multiple_of(groups)
        {
            return Err(self.err(
                "GroupNorm",
                format!("{name}: input {} vs {channels} channels/{groups} groups", show_shape(&s)),
            ));
        }
        let g = self.reshape(x, &[0, groups as i64, -1])?; // [B, G, C/G·H·W]
        let ones = self.const_f(&[groups], &vec![1.0; groups]);
        let zeros = self.const_f(&[groups], &vec![0.0; groups]);
        let gs = self.shape_of(g);
        let n = self.node1(
            "InstanceNormalization",
            &[g, ones, zeros],
            vec![attr::float("epsilon", eps)],
            self.dtype_of(x),
            gs,
        );
        let n = self.reshape_like(n, x)?; // [B, C, H, W]
        let mut bshape = vec![channels];
        bshape.extend(std::iter::repeat_n(1, s.len() - 2));
        let w = self.weight(&format!("{name}.weight"), &[channels])?;
        let b = self.weight(&format!("{name}.bias"), &[channels])?;
        let w = self.reshape(w, &bshape.iter().map(|&d| d as i64).collect::<Vec<_>>())?;
        let b = self.reshape(b, &bshape.iter().map(|&d| d as i64).collect::<Vec<_>>())?;
        let y = self.mul(n, w)?;
        self.add(y, b)
    }

    /// LayerNorm over the last axis without affine parameters.
    pub fn layer_norm(&self, x: T, eps: f32) -> Result<T> {
        let s = self.shape_of(x);
        let d = s
            .last()
            .and_then(|d| d.fixed())
            .ok_or_else(|| self.err("LayerNormalization", "last dim unknown"))?;
        let ones = self.const_f(&[d as usize], &vec![1.0; d as usize]);
        let attrs = vec![attr::int("axis", -1), attr::float("epsilon", eps)];
        Ok(self.node1("LayerNormalization", &[x, ones], attrs, self.dtype_of(x), s))
    }

    /// RMSNorm over the last axis with a learnable weight `scope.{name}` [D]: `x / rms(x) · w`.
    ///
    /// ONNX Runtime target: opset-23 `RMSNormalization` (f32 statistics). TensorRT target:
    /// `x · (mean(x²) + eps)^-½ · w` in basic ops.
    pub fn rms_norm(&self, x: T, name: &str, eps: f32) -> Result<T> {
        let s = self.shape_of(x);
        let d = s
            .last()
            .and_then(|d| d.fixed())
            .ok_or_else(|| self.err("RMSNormalization", "last dim unknown"))?;
        let w = self.weight(name, &[d as usize])?;
        match self.target {
            Target::Ort => {
                let attrs =
                    vec![attr::int("axis", -1), attr::float("epsilon", eps), attr::int("stash_type", 1)];
                Ok(self.node1("RMSNormalization", &[x, w], attrs, self.dtype_of(x), s))
            }
            Target::TensorRt => {
                let n = self.rms_normalize(x, eps)?;
                self.mul(n, w)
            }
        }
    }

    /// `x · (mean(x², -1) + eps)^-½` computed in f32, cast back to x's dtype.
    pub fn rms_normalize(&self, x: T, eps: f32) -> Result<T> {
        let dt = self.dtype_of(x);
        let xf = self.cast(x, DType::F32);
        let sq = self.mul(xf, xf)?;
        let ms = self.reduce_mean(sq, &[-1], true)?;
        let e = self.const_float(DType::F32, &[], &[eps]);
        let r = self.sqrt(self.add(ms, e)?);
        let r = self.reciprocal(r);
        let y = self.mul(xf, r)?;
        Ok(self.cast(y, dt))
    }

    /// Mean over `axes`.
    pub fn reduce_mean(&self, x: T, axes: &[i64], keepdims: bool) -> Result<T> {
        let s = self.shape_of(x);
        let r = s.len() as i64;
        let ax: Vec<usize> =
            axes.iter().map(|&a| if a < 0 { (a + r) as usize } else { a as usize }).collect();
        if ax.iter().any(|&a| a >= s.len()) {
            return Err(self.err("ReduceMean", "axis out of range"));
        }
        let out = s
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match (ax.contains(&i), keepdims) {
                (true, true) => Some(Dim::Fixed(1)),
                (true, false) => None,
                _ => Some(d.clone()),
            })
            .collect();
        let a = self.ints(axes);
        Ok(self.node1(
            "ReduceMean",
            &[x, a],
            vec![attr::int("keepdims", keepdims as i64)],
            self.dtype_of(x),
            out,
        ))
    }

    /// Softmax over `axis`.
    pub fn softmax(&self, x: T, axis: i64) -> T {
        self.node1("Softmax", &[x], vec![attr::int("axis", axis)], self.dtype_of(x), self.shape_of(x))
    }
}

/// Output size of a convolution axis: `(d + 2p - k) / s + 1`.
fn conv_dim(d: &Dim, k: i64, s: i64, p: i64) -> Dim {
    match d {
        Dim::Fixed(n) => Dim::Fixed((n + 2 * p - k) / s + 1),
        _ if s == 1 && 2 * p == k - 1 => d.clone(),
        _ if s == 1 => d.add(&Dim::Fixed(2 * p - k + 1)),
        // `X+c` padded then strided so that (X + c + 2p - k) / s + 1 == X / s
        Dim::Sym(x)
            if x.rsplit_once('+')
                .and_then(|(_, c)| c.parse::<i64>().ok())
                .is_some_and(|c| c + 2 * p - k + s == 0) =>
        {
            let (base, _) = x.rsplit_once('+').unwrap_or((x, ""));
            Dim::Sym(base.to_string()).div(s)
        }
        _ => Dim::Sym(format!("conv({d})")),
    }
}

//! Scaled dot-product attention and rotary position embeddings.
//!
//! ONNX Runtime target: opset-23 `Attention` (GQA native) and `RotaryEmbedding` kernels.
//! TensorRT target: MatMul / Softmax / element-wise decompositions that TensorRT 10's ONNX
//! parser accepts and its Myelin backend fuses back into flash attention.

use crate::{attr, broadcast, show_shape, DType, Dim, Graph, Result, Target, T};

/// How rotary embeddings pair the features of a head.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2m, 2m+1)` (FLUX / GPT-J).
    Interleaved,
    /// Halves `(m, m + Dh/2)` (Llama / Mistral / Qwen "rotate_half").
    Halves,
}

impl Graph {
    /// `softmax(q kᵀ · scale + mask) v` over q [B,Hq,S,Dh], k/v [B,Hkv,T,Dh] (Hq a multiple
    /// of Hkv). `mask` is an additive float mask broadcastable to [B,Hq,S,T].
    pub fn attention(&self, q: T, k: T, v: T, mask: Option<T>, scale: f32) -> Result<T> {
        let (sq, sk, sv) = (self.shape_of(q), self.shape_of(k), self.shape_of(v));
        if sq.len() != 4
            || sk.len() != 4
            || sv.len() != 4
            || sq[3] != sk[3]
            || sk[1] != sv[1]
            || sk[2] != sv[2]
        {
            return Err(self.err(
                "Attention",
                format!(
                    "q {} k {} v {} are not [B,H,S,Dh]",
                    show_shape(&sq),
                    show_shape(&sk),
                    show_shape(&sv)
                ),
            ));
        }
        let (hq, hkv) = (sq[1].fixed().unwrap_or(0), sk[1].fixed().unwrap_or(0));
        if hq == 0 || hkv == 0 || hq % hkv != 0 {
            return Err(self.err("Attention", format!("{hq} query heads vs {hkv} kv heads")));
        }
        if let Some(m) = mask {
            let sm = self.shape_of(m);
            let scores = [sq[0].clone(), sq[1].clone(), sq[2].clone(), sk[2].clone()];
            if sm.len() > 4 || broadcast(&sm, &scores).is_none() {
                return Err(self.err(
                    "Attention",
                    format!("mask {} does not broadcast to scores {}", show_shape(&sm), show_shape(&scores)),
                ));
            }
            if self.dtype_of(m) != self.dtype_of(q) {
                return Err(
                    self.err("Attention", format!("mask dtype {} vs {}", self.dtype_of(m), self.dtype_of(q)))
                );
            }
        }
        let out = vec![sq[0].clone(), sq[1].clone(), sq[2].clone(), sv[3].clone()];
        match self.target {
            Target::Ort => {
                let attrs = vec![attr::float("scale", scale)];
                Ok(self.node(
                    "Attention",
                    "",
                    &[Some(q), Some(k), Some(v), mask],
                    attrs,
                    vec![(self.dtype_of(q), out)],
                )[0])
            }
            Target::TensorRt => self.attention_decomposed(q, k, v, mask, scale, hq / hkv),
        }
    }

    fn attention_decomposed(&self, q: T, k: T, v: T, mask: Option<T>, scale: f32, rep: i64) -> Result<T> {
        let dh = self.shape_of(q)[3].fixed().unwrap_or(0);
        let dv = self.shape_of(v)[3].fixed().unwrap_or(0);
        let hkv = self.shape_of(k)[1].fixed().unwrap_or(0);
        let (q, k, v) = if rep > 1 {
            // [B,Hkv,rep,S,Dh] against [B,Hkv,1,T,Dh]: broadcasting replaces repeat_kv.
            (self.reshape(q, &[0, hkv, rep, -1, dh])?, self.unsqueeze(k, &[2])?, self.unsqueeze(v, &[2])?)
        } else {
            (q, k, v)
        };
        let r = self.rank(k);
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 1, r - 2);
        let kt = self.transpose(k, &perm)?;
        let s = self.matmul(q, kt)?;
        let s = self.mul(s, self.scalar(scale))?;
        let s = match mask {
            Some(m) if rep > 1 => {
                let m = self.group_mask(m, hkv, rep)?; // [B|1, Hkv|1, rep|1, S, T]
                self.add(s, m)?
            }
            Some(m) => self.add(s, m)?,
            None => s,
        };
        let p = self.softmax(s, -1);
        let o = self.matmul(p, v)?;
        if rep > 1 {
            self.reshape(o, &[0, hkv * rep, -1, dv]) // [B,Hq,S,Dv]
        } else {
            Ok(o)
        }
    }

    /// Lifts a mask broadcastable to [B,Hq,S,T] to the grouped-query layout [B,Hkv,rep,S,T]
    /// (query head `h` is kv head `h / rep`, replica `h % rep`).
    fn group_mask(&self, m: T, hkv: i64, rep: i64) -> Result<T> {
        let r = self.rank(m);
        if r <= 2 {
            return Ok(m); // [S,T] or [T] broadcast over every leading axis as they are
        }
        let lead: Vec<i64> = (0..4 - r as i64).collect();
        let m = if lead.is_empty() { m } else { self.unsqueeze(m, &lead)? }; // [B,H,S,T]
        let per_head = self.shape_of(m)[1] != Dim::Fixed(1);
        let m = self.unsqueeze(m, &[2])?; // [B,H,1,S,T]
        if per_head {
            self.reshape(m, &[0, hkv, rep, 0, 0]) // [B,Hkv,rep,S,T]
        } else {
            Ok(m)
        }
    }

    /// Rotates q or k [B,H,S,Dh] by angles whose cos/sin tables are [S, Dh/2] (shared over
    /// the batch), pairing features by `style`.
    pub fn rope(&self, x: T, cos: T, sin: T, style: RopeStyle) -> Result<T> {
        let s = self.shape_of(x);
        let dh = s
            .get(3)
            .and_then(|d| d.fixed())
            .ok_or_else(|| self.err("RotaryEmbedding", "x must be [B,H,S,Dh]"))?;
        let (cs, ss) = (self.shape_of(cos), self.shape_of(sin));
        if cs.len() != 2 || cs[1] != Dim::Fixed(dh / 2) || dh % 2 != 0 {
            return Err(self.err("RotaryEmbedding", format!("cos {} is not [S,{}]", show_shape(&cs), dh / 2)));
        }
        if ss != cs {
            return Err(
                self.err("RotaryEmbedding", format!("sin {} vs cos {}", show_shape(&ss), show_shape(&cs)))
            );
        }
        let (cos, sin) = (self.cast(cos, self.dtype_of(x)), self.cast(sin, self.dtype_of(x)));
        match self.target {
            Target::Ort => {
                // position_ids = arange(S) broadcast over the batch: row i of the tables, made
                // once per (B, S) and shared by every attention of the graph.
                let pos = self.rope_positions((s[0].clone(), s[2].clone()), || {
                    let xs = self.shape(x);
                    let b = self.gather(xs, self.ints(&[0]), 0)?;
                    let n = self.gather(xs, self.ints(&[2]), 0)?;
                    let n0 = self.squeeze(n, &[0])?;
                    let ar = self.node1(
                        "Range",
                        &[self.const_i64(&[], &[0]), n0, self.const_i64(&[], &[1])],
                        vec![],
                        DType::I64,
                        vec![s[2].clone()],
                    );
                    let ar = self.unsqueeze(ar, &[0])?; // [1, S]
                    let bs = self.concat(&[b, n], 0)?;
                    Ok(self.expand(ar, bs, vec![s[0].clone(), s[2].clone()])) // [B, S]
                })?;
                let style = attr::int("interleaved", (style == RopeStyle::Interleaved) as i64);
                Ok(self.node1("RotaryEmbedding", &[x, cos, sin, pos], vec![style], self.dtype_of(x), s))
            }
            Target::TensorRt => self.rope_decomposed(x, cos, sin, style, dh),
        }
    }

    fn rope_decomposed(&self, x: T, cos: T, sin: T, style: RopeStyle, dh: i64) -> Result<T> {
        match style {
            RopeStyle::Interleaved => {
                let p = self.reshape(x, &[0, 0, 0, dh / 2, 2])?; // [B,H,S,Dh/2,2]
                let parts = self.split(p, -1, &[1, 1])?;
                let (x0, x1) = (self.squeeze(parts[0], &[-1])?, self.squeeze(parts[1], &[-1])?);
                let y0 = self.sub(self.mul(x0, cos)?, self.mul(x1, sin)?)?;
                let y1 = self.add(self.mul(x0, sin)?, self.mul(x1, cos)?)?;
                let y = self.concat(&[self.unsqueeze(y0, &[-1])?, self.unsqueeze(y1, &[-1])?], -1)?;
                self.reshape(y, &[0, 0, 0, dh])
            }
            RopeStyle::Halves => {
                let parts = self.split(x, -1, &[dh / 2, dh / 2])?;
                let (x1, x2) = (parts[0], parts[1]);
                let y1 = self.sub(self.mul(x1, cos)?, self.mul(x2, sin)?)?;
                let y2 = self.add(self.mul(x2, cos)?, self.mul(x1, sin)?)?;
                self.concat(&[y1, y2], -1)
            }
        }
    }
}

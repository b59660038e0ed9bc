//! Constant folding of the small chains that deliver a weight to its MatMul or Conv.
//!
//! The exporter writes a linear layer as `Transpose(W) → MatMul` with W stored (out, in). In
//! `--weights link` mode W itself may be assembled on the fly from linked checkpoint pieces
//! (`Concat`, `Reshape`, `Cast` from bf16, `Identity`, `Constant` shapes). [`Consts`] recognises
//! such chains and evaluates them to f32 values, so Q/DQ insertion can quantise the weight the
//! node actually sees and drop the chain.

use std::collections::HashMap;

use flux2_graphs::onnx::{attribute_proto::AttributeType, NodeProto, TensorProto};

use crate::error::{CalibError, Result};
use crate::onnx_file::{dtype, OnnxFile};

/// Ops a weight chain may contain.
const CHAIN_OPS: &[&str] = &["Identity", "Cast", "Transpose", "Reshape", "Concat", "Constant"];

/// An evaluated constant.
#[derive(Clone, Debug, PartialEq)]
pub struct ConstTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Initializers and producers of a model, for recognising and folding constant chains.
pub struct Consts<'a> {
    file: &'a OnnxFile,
    inits: HashMap<&'a str, &'a TensorProto>,
    producers: HashMap<&'a str, &'a NodeProto>,
}

fn node_err(n: &NodeProto, msg: impl Into<String>) -> CalibError {
    CalibError::Node { node: n.name.clone(), msg: msg.into() }
}

impl<'a> Consts<'a> {
    pub fn new(file: &'a OnnxFile) -> Consts<'a> {
        let g = file.graph();
        let inits = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut producers = HashMap::new();
        for n in &g.node {
            for o in &n.output {
                producers.insert(o.as_str(), n);
            }
        }
        Consts { file, inits, producers }
    }

    /// The node producing `name`, if any.
    pub fn producer(&self, name: &str) -> Option<&'a NodeProto> {
        self.producers.get(name).copied()
    }

    /// Whether `name` is an initializer or a chain of [`CHAIN_OPS`] over initializers.
    pub fn is_const(&self, name: &str) -> bool {
        if self.inits.contains_key(name) {
            return true;
        }
        match self.producer(name) {
            Some(n) if CHAIN_OPS.contains(&n.op_type.as_str()) => {
                n.input.iter().filter(|i| !i.is_empty()).all(|i| self.is_const(i))
            }
            _ => false,
        }
    }

    /// The name a layer's weight was declared under: the input of a `Transpose` in front of
    /// `name`, else `name` itself.
    pub fn declared_name(&self, name: &str) -> String {
        let mut cur = name;
        loop {
            match self.producer(cur) {
                Some(n) if n.op_type == "Transpose" => return n.input.first().cloned().unwrap_or_default(),
                Some(n) if n.op_type == "Identity" && !n.input.is_empty() => cur = &n.input[0],
                _ => return cur.to_string(),
            }
        }
    }

    /// Evaluates the constant `name` to f32 values.
    pub fn eval(&self, name: &str) -> Result<ConstTensor> {
        if let Some(t) = self.inits.get(name) {
            return Ok(ConstTensor {
                shape: t.dims.iter().map(|&d| d.max(0) as usize).collect(),
                data: self.file.tensor_f32(t)?,
            });
        }
        let n = self.producer(name).ok_or_else(|| CalibError::Tensor {
            name: name.into(),
            path: self.file.path.clone(),
            msg: "not an initializer and not produced by any node".into(),
        })?;
        let input = |i: usize| -> Result<ConstTensor> {
            let name = n.input.get(i).ok_or_else(|| node_err(n, format!("missing input {i}")))?;
            self.eval(name)
        };
        match n.op_type.as_str() {
            "Identity" => input(0),
            "Cast" => {
                let mut x = input(0)?;
                match int_attr(n, "to").map(|t| t as i32).unwrap_or(dtype::FLOAT) {
                    dtype::FLOAT | dtype::DOUBLE => {}
                    dtype::FLOAT16 => x.data.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
                    dtype::BFLOAT16 => x.data.iter_mut().for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
                    other => return Err(node_err(n, format!("Cast to type {other} is not a float weight"))),
                }
                Ok(x)
            }
            "Transpose" => {
                let x = input(0)?;
                let perm: Vec<usize> = match ints_attr(n, "perm") {
                    Some(p) => p.iter().map(|&v| v as usize).collect(),
                    None => (0..x.shape.len()).rev().collect(),
                };
                transpose(&x, &perm)
                    .ok_or_else(|| node_err(n, format!("perm {perm:?} for shape {:?}", x.shape)))
            }
            "Reshape" => {
                let x = input(0)?;
                let shape_name = n.input.get(1).ok_or_else(|| node_err(n, "Reshape without a shape"))?;
                let spec = self.eval_ints(shape_name)?;
                let shape = reshape_dims(&x.shape, &spec)
                    .ok_or_else(|| node_err(n, format!("cannot reshape {:?} to {spec:?}", x.shape)))?;
                Ok(ConstTensor { shape, data: x.data })
            }
            "Concat" => {
                let parts: Vec<ConstTensor> =
                    (0..n.input.len()).map(input).collect::<Result<Vec<ConstTensor>>>()?;
                let axis = int_attr(n, "axis").unwrap_or(0);
                concat(&parts, axis).ok_or_else(|| node_err(n, format!("cannot concat on axis {axis}")))
            }
            "Constant" => constant_value(n).ok_or_else(|| node_err(n, "unsupported Constant value")),
            other => Err(node_err(n, format!("{other} is not part of a constant weight chain"))),
        }
    }

    /// Evaluates an integer constant (a Reshape shape).
    fn eval_ints(&self, name: &str) -> Result<Vec<i64>> {
        if let Some(t) = self.inits.get(name) {
            return self.file.tensor_i64(t);
        }
        match self.producer(name) {
            Some(n) if n.op_type == "Constant" => {
                if let Some(v) = ints_attr(n, "value_ints") {
                    return Ok(v.to_vec());
                }
                match n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()) {
                    Some(t) => self.file.tensor_i64(t),
                    None => Err(node_err(n, "Constant without integer values")),
                }
            }
            Some(n) if n.op_type == "Identity" => {
                self.eval_ints(n.input.first().map(|s| s.as_str()).unwrap_or(""))
            }
            _ => Err(CalibError::Tensor {
                name: name.into(),
                path: self.file.path.clone(),
                msg: "shape is not a constant".into(),
            }),
        }
    }
}

fn int_attr(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name && a.r#type == AttributeType::Int as i32).map(|a| a.i)
}

fn ints_attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n [i64]> {
    n.attribute
        .iter()
        .find(|a| a.name == name && a.r#type == AttributeType::Ints as i32)
        .map(|a| a.ints.as_slice())
}

fn constant_value(n: &NodeProto) -> Option<ConstTensor> {
    let a = n.attribute.first()?;
    match a.name.as_str() {
        "value_float" => Some(ConstTensor { shape: vec![], data: vec![a.f] }),
        "value_floats" => Some(ConstTensor { shape: vec![a.floats.len()], data: a.floats.clone() }),
        "value" => {
            let t = a.t.as_ref()?;
            let data = if t.data_type == dtype::FLOAT && !t.raw_data.is_empty() {
                t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            } else if t.data_type == dtype::FLOAT {
                t.float_data.clone()
            } else {
                return None;
            };
            Some(ConstTensor { shape: t.dims.iter().map(|&d| d as usize).collect(), data })
        }
        _ => None,
    }
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// numpy `transpose(x, perm)`.
pub fn transpose(x: &ConstTensor, perm: &[usize]) -> Option<ConstTensor> {
    let rank = x.shape.len();
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
        return None;
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let (src, dst) = (strides(&x.shape), strides(&shape));
    let mut data = vec![0f32; x.data.len()];
    for (i, v) in data.iter_mut().enumerate() {
        let mut off = 0;
        for (d, &p) in perm.iter().enumerate() {
            off += (i / dst[d]) % shape[d] * src[p];
        }
        *v = x.data[off];
    }
    Some(ConstTensor { shape, data })
}

/// ONNX Reshape dims: 0 copies the input dim, −1 is inferred.
fn reshape_dims(input: &[usize], spec: &[i64]) -> Option<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out: Vec<usize> = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            0 => out.push(*input.get(i)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            d if d > 0 => out.push(d as usize),
            _ => return None,
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        out[i] = total / known;
    }
    (out.iter().product::<usize>() == total).then_some(out)
}

fn concat(parts: &[ConstTensor], axis: i64) -> Option<ConstTensor> {
    let first = parts.first()?;
    let rank = first.shape.len() as i64;
    let ax = if axis < 0 { axis + rank } else { axis };
    if !(0..rank).contains(&ax) {
        return None;
    }
    let ax = ax as usize;
    let outer: usize = first.shape[..ax].iter().product();
    let mut shape = first.shape.clone();
    shape[ax] = 0;
    for p in parts {
        let same = p.shape.len() == first.shape.len()
            && p.shape.iter().zip(&first.shape).enumerate().all(|(i, (a, b))| i == ax || a == b);
        if !same {
            return None;
        }
        shape[ax] += p.shape[ax];
    }
    let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
    for o in 0..outer {
        for p in parts {
            let chunk: usize = p.shape[ax..].iter().product();
            data.extend_from_slice(&p.data[o * chunk..(o + 1) * chunk]);
        }
    }
    Some(ConstTensor { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_numpy() {
        let x = ConstTensor { shape: vec![2, 3], data: vec![0., 1., 2., 3., 4., 5.] };
        let t = transpose(&x, &[1, 0]).unwrap_or_else(|| unreachable!());
        assert_eq!(t.shape, vec![3, 2]);
        assert_eq!(t.data, vec![0., 3., 1., 4., 2., 5.]);
        let y = ConstTensor { shape: vec![2, 1, 3], data: (0..6).map(|v| v as f32).collect() };
        let t = transpose(&y, &[2, 0, 1]).unwrap_or_else(|| unreachable!());
        assert_eq!(t.shape, vec![3, 2, 1]);
        assert_eq!(t.data, vec![0., 3., 1., 4., 2., 5.]);
        assert!(transpose(&x, &[0, 0]).is_none());
    }

    #[test]
    fn reshape_and_concat() {
        assert_eq!(reshape_dims(&[4, 6], &[0, -1, 2]), Some(vec![4, 3, 2]));
        assert_eq!(reshape_dims(&[4, 6], &[5, -1]), None);
        let a = ConstTensor { shape: vec![1, 2], data: vec![1., 2.] };
        let b = ConstTensor { shape: vec![2, 2], data: vec![3., 4., 5., 6.] };
        let c = concat(&[a.clone(), b], 0).unwrap_or_else(|| unreachable!());
        assert_eq!((c.shape, c.data), (vec![3, 2], vec![1., 2., 3., 4., 5., 6.]));
        let d = concat(&[a.clone(), a], 1).unwrap_or_else(|| unreachable!());
        assert_eq!((d.shape, d.data), (vec![1, 4], vec![1., 2., 1., 2.]));
    }
}

//! Op emitters: one small method per ONNX op (or fused pattern), each inferring the dtype
//! and shape of its outputs and rejecting mismatched inputs when the node is wired.
//!
//! Families live in their own files: element-wise math, shape manipulation, neural-net
//! layers (matmul, conv, norms) and attention with rotary embeddings. Ops whose best form
//! differs by [`crate::Target`] (opset-23 fused kernels for ONNX Runtime, decompositions
//! for TensorRT) choose here, so model code never branches on the target.

mod attention;
mod elementwise;
mod nn;
mod shape_ops;

pub use attention::RopeStyle;

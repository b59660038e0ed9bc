//! Op-emitter suite: every op of the graph builder, built as a one-op graph, run on ONNX
//! Runtime 1.31 CPU and compared with a naive ndarray reference on random seeded shapes and
//! values (proptest, 16 cases per op). Ops whose emission differs by target (RMSNorm,
//! attention, RoPE) run for both `Target::Ort` (fused opset-23 kernels) and
//! `Target::TensorRt` (opset-21 decompositions). `checker` validates a graph using every op
//! with `onnx.checker.check_model(full_check=True)`.

mod attention;
mod axes;
mod checker;
mod common;
mod elementwise;
mod nn;
mod norms;
mod shape_ops;
mod spatial;

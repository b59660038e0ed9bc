//! Op-emitter suite (style.md §6(a)): every op of the graph builder, built as a one-op graph,
//! run on ONNX Runtime 1.31 CPU and compared with a naive ndarray reference on random seeded
//! shapes and values (proptest `Problem` structs, 16 cases per op; `PROPTEST_CASES=200` for a
//! deeper run). Each check also evaluates the output shape the builder inferred at wiring
//! time (symbols bound from the inputs) against the shape ORT produced.
//!
//! Ops whose emission differs by target (RMSNorm, attention, RoPE) run for both
//! `Target::Ort` (fused opset-23 kernels) and `Target::TensorRt` (opset-21 decompositions),
//! in f32 and f16 graphs. `checker` validates a graph using every op with
//! `onnx.checker.check_model(full_check=True)`.
//!
//! Run with `cargo test -p flux2-tests --test ops`.

mod attention;
mod axes;
mod checker;
mod common;
mod elementwise;
mod nn;
mod norms;
mod shape_ops;
mod spatial;

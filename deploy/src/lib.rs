//! flux2-deploy: getting an exported (and calibrated) model onto a TensorRT target.
//!
//! * [`lint`]: `flux2 check`, what TensorRT 10/11 or ONNX Runtime will refuse or run slowly in
//!   the graphs, found without a GPU;
//! * [`trt`]: `flux2 build`, engines built through ONNX Runtime's TensorRT provider with the
//!   runtime's providers and checks.
//!
//! It reads graphs (`flux2-graphs`' ONNX types) and runs sessions through `flux2-runtime`; the
//! runtime knows nothing of it, so a device build of `flux2` leaves this crate out.

pub mod lint;
pub mod trt;

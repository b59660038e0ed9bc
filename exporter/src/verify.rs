//! Reading a checkpoint's data to find tensors holding NaN or ±Inf: what `--verify` does in
//! link mode and `flux2 inspect` (copy mode checks as it converts, see [`crate::copy`]).
//! Only exponent bits are looked at, so it runs at the speed the data can be read.

use crate::checkpoint::Checkpoint;
use crate::convert::count_nonfinite;
use crate::copy::nonfinite_error;
use crate::Result;

/// A tensor with non-finite values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonFinite {
    pub tensor: String,
    pub file: std::path::PathBuf,
    /// NaN/Inf elements, of `numel`.
    pub count: usize,
    pub numel: u64,
}

/// Bytes looked at per step (progress granularity).
const STEP: usize = 64 << 20;

/// Every float tensor of `ckpt` with NaN or Inf values, in name order. `progress` gets bytes read.
pub fn nonfinite_tensors(ckpt: &Checkpoint, progress: &mut dyn FnMut(u64)) -> Vec<NonFinite> {
    let mut found = Vec::new();
    for (name, t) in &ckpt.tensors {
        let esz = t.dtype().size();
        let mut count = 0;
        // a GGUF tensor that cannot be decoded was refused when the file was opened
        let data = ckpt.bytes(t).unwrap_or_default();
        for part in data.chunks(STEP / esz * esz) {
            count += count_nonfinite(t.dtype(), part);
            progress(part.len() as u64);
        }
        if count > 0 {
            found.push(NonFinite {
                tensor: name.clone(),
                file: ckpt.files[t.file].path.clone(),
                count,
                numel: t.shape().iter().product::<usize>() as u64,
            });
        }
    }
    found
}

/// Fails naming the first non-finite tensor of `ckpt` (and how many others there are).
pub fn require_finite(ckpt: &Checkpoint, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let bad = nonfinite_tensors(ckpt, progress);
    match bad.first() {
        None => Ok(()),
        Some(b) => {
            let mut e = nonfinite_error(&b.tensor, &b.file, b.count, b.numel);
            if bad.len() > 1 {
                if let crate::ExportError::Tensor { msg, .. } = &mut e {
                    msg.push_str(&format!("; {} more tensors have NaN/Inf too", bad.len() - 1));
                }
            }
            Err(e)
        }
    }
}

//! flux2-calib

pub mod timesteps;

//! flux2-calib

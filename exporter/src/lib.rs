//! flux2-exporter

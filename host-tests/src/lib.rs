//! Host harness (placeholder).

//! Fault tests under load (being written).

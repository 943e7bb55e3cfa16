//! The shipped nginx config in front of the real API (being written).

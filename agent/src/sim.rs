//! Household traffic simulator (being written).

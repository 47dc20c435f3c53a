//! getinfo.memory (being written).

//! getinfo.processes (being written).

//! getinfo.packages (being written).

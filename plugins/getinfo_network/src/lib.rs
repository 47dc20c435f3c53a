//! getinfo.network (being written).

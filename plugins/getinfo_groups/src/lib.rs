//! getinfo.groups (being written).

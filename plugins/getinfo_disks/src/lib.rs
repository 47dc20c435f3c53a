//! getinfo.disks (being written).

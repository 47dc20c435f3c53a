//! getinfo.cpu (being written).

//! getinfo.os (being written).

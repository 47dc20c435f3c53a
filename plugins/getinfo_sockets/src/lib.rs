//! getinfo.sockets (being written).

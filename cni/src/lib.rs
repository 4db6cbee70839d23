//! The parts of the `weft` CNI plugin that read what the runtime gives it
//! (the network configuration, `CNI_ARGS`, a chained `prevResult`): a library
//! so that the fuzz targets reach them. The plugin itself is `main.rs`.
#![forbid(unsafe_code)]

pub mod spec;

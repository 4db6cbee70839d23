//! The data keys, sealer, opener and replay window live in
//! [`weft_peer_proto::seal`], beside the data header they protect, so that
//! the fuzz targets reach them without the router's dependencies.
pub use weft_peer_proto::seal::*;

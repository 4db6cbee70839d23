//! The data keys, sealer, opener and replay window live in
//! [`weft_peer_proto::seal`], and the end-to-end origin keys of relayed
//! packets in [`weft_peer_proto::origin`], beside the data header they
//! protect, so that the fuzz targets reach them without the router's
//! dependencies.
pub use weft_peer_proto::origin::*;
pub use weft_peer_proto::seal::*;

//! The `weft` CNI plugin. Not implemented yet: it answers every call with a
//! CNI error so that a runtime never mistakes it for a working plugin.

fn main() {
    println!(r#"{{"cniVersion":"1.1.0","code":999,"msg":"weft CNI plugin not implemented yet"}}"#);
    std::process::exit(1);
}

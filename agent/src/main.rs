//! `aptgate-agent`: see the crate documentation.

fn main() {
    eprintln!("aptgate-agent: not implemented yet");
    std::process::exit(2);
}

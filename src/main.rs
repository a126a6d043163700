//! `realizar`: one binary for every role (inspect, serve, node, gateway, ...).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

//! `flwr-clientapp`: one client app instruction in a process of its own, started by
//! `flower-supernode --isolation subprocess`.

fn main() -> std::process::ExitCode {
    node::clientapp::main()
}

//! Flags that Flower's deployment scripts pass and that have no effect in this design. Each is
//! accepted, so that such a script starts both daemons, and named in one warning line that says
//! why it changes nothing here.

use std::path::PathBuf;

/// `flower-superlink` flags with no effect here.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SuperLinkFlags {
    /// Flower's Fleet API transport (grpc-rere, grpc-adapter, rest). No effect: the Fleet API is
    /// QUIC here.
    #[arg(long, value_name = "TYPE", hide_short_help = true)]
    pub fleet_api_type: Option<String>,
    /// Flower's ServerApp isolation (subprocess, process). No effect: built-in server apps run
    /// inside flower-superlink, and an app bundle's server program in a process of its own.
    #[arg(long, value_name = "MODE", hide_short_help = true)]
    pub isolation: Option<String>,
    /// Flower's directory for app bundles. No effect: runs and their results live in the
    /// database (--database).
    #[arg(long, value_name = "DIR", hide_short_help = true)]
    pub storage_dir: Option<PathBuf>,
    /// Flower's switch for installing an app's Python dependencies. No effect: nothing is
    /// installed here.
    #[arg(long, hide_short_help = true)]
    pub disable_runtime_dependency_installation: bool,
}

impl SuperLinkFlags {
    /// One warning line per flag given.
    pub fn notices(&self) -> Vec<String> {
        let mut notices = Vec::new();
        if let Some(kind) = &self.fleet_api_type {
            notices.push(format!(
                "--fleet-api-type {kind} has no effect: the Fleet API is QUIC (UDP) here"
            ));
        }
        if let Some(mode) = &self.isolation {
            notices.push(format!(
                "--isolation {mode} has no effect on flower-superlink: built-in server apps run \
                 inside it, an app bundle's server program in a process of its own"
            ));
        }
        if let Some(dir) = &self.storage_dir {
            notices.push(format!(
                "--storage-dir {} has no effect: runs and their results live in the database \
                 (--database)",
                dir.display()
            ));
        }
        if self.disable_runtime_dependency_installation {
            notices.push(
                "--disable-runtime-dependency-installation has no effect: flower-superlink \
                 installs nothing"
                    .into(),
            );
        }
        notices
    }
}

/// `flower-supernode` flags with no effect here.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SuperNodeFlags {
    /// Flower's publisher keys that app bundles must be signed with (YAML). No effect: nodes run
    /// the built-in apps only.
    #[arg(long, value_name = "FILE", hide_short_help = true)]
    pub trusted_entities: Option<PathBuf>,
    /// Deprecated in Flower. No effect: the public key is derived from
    /// --auth-supernode-private-key.
    #[arg(long, value_name = "FILE", hide_short_help = true)]
    pub auth_supernode_public_key: Option<PathBuf>,
    /// Flower's switch for installing an app's Python dependencies. No effect: nothing is
    /// installed here.
    #[arg(long, hide_short_help = true)]
    pub allow_runtime_dependency_installation: bool,
}

impl SuperNodeFlags {
    /// One warning line per flag given.
    pub fn notices(&self) -> Vec<String> {
        let mut notices = Vec::new();
        if let Some(file) = &self.trusted_entities {
            notices.push(format!(
                "--trusted-entities {} has no effect: this node runs its built-in apps only, \
                 so there is no app bundle to verify",
                file.display()
            ));
        }
        if let Some(file) = &self.auth_supernode_public_key {
            notices.push(format!(
                "--auth-supernode-public-key {} has no effect: the public key is derived from \
                 --auth-supernode-private-key (as in Flower, where the flag is deprecated)",
                file.display()
            ));
        }
        if self.allow_runtime_dependency_installation {
            notices.push(
                "--allow-runtime-dependency-installation has no effect: flower-supernode \
                 installs nothing"
                    .into(),
            );
        }
        notices
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct SuperLink {
        #[command(flatten)]
        flags: SuperLinkFlags,
    }

    #[derive(Parser)]
    struct SuperNode {
        #[command(flatten)]
        flags: SuperNodeFlags,
    }

    #[test]
    fn every_flag_given_is_named_once_and_none_given_is_silent() {
        let link = SuperLink::try_parse_from([
            "flower-superlink",
            "--fleet-api-type",
            "grpc-rere",
            "--isolation",
            "subprocess",
            "--storage-dir",
            "/tmp/x",
            "--disable-runtime-dependency-installation",
        ])
        .unwrap();
        let notices = link.flags.notices();
        assert_eq!(notices.len(), 4, "{notices:#?}");
        for flag in [
            "--fleet-api-type",
            "--isolation",
            "--storage-dir",
            "--disable-runtime-dependency-installation",
        ] {
            assert_eq!(notices.iter().filter(|n| n.starts_with(flag)).count(), 1);
        }
        let node = SuperNode::try_parse_from([
            "flower-supernode",
            "--trusted-entities",
            "t.yaml",
            "--auth-supernode-public-key",
            "k.pub",
            "--allow-runtime-dependency-installation",
        ])
        .unwrap();
        assert_eq!(node.flags.notices().len(), 3);
        let quiet = SuperLink::try_parse_from(["flower-superlink"]).unwrap();
        assert!(quiet.flags.notices().is_empty());
    }
}

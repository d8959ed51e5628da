//! A simulation federation's `options`, as Flower writes them, read into the virtual federation
//! the SuperLink hosts ([`wire::control::Simulation`]).
//!
//! Flower's options and what they mean here:
//! - `num-supernodes`: the virtual SuperNodes (required).
//! - `backend.client-resources.num-cpus`: cores one client app uses (default 1: Flower's Ray
//!   default of 2 is a Ray actor's, and a worker here is one thread or one process).
//! - `backend.init-args.num-cpus`: cores the simulation may use (default: all of this machine's).
//!   Client apps running at once: the second divided by the first.
//! - `backend.client-resources.num-gpus`, `backend.init-args.num-gpus`: no effect (a client app
//!   here trains on the GPU wgpu finds, or the CPU); said in one warning line, as is any other
//!   option this simulation does not read.

use crate::CliError;
use wire::control::Simulation;

/// What `options` ask for, and the warning line for what they ask that has no effect here.
pub fn from_options(options: &toml::Table) -> Result<(Simulation, Option<String>), CliError> {
    let flat = crate::app_config::flatten(options);
    let invalid = |what: String| CliError::Config(format!("options.{what}"));
    let integer = |key: &str| -> Result<Option<i64>, CliError> {
        match flat.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(value)) => Ok(Some(*value)),
            // Flower's templates write CPU counts as floats too (`num-cpus = 1.0`).
            Some(toml::Value::Float(value)) if value.fract() == 0.0 && value.is_finite() => {
                Ok(Some(*value as i64))
            }
            Some(other) => Err(invalid(format!(
                "{key} must be a whole number, not {other}"
            ))),
        }
    };
    let num_supernodes = integer("num-supernodes")?.ok_or_else(|| {
        CliError::Config(
            "a simulation federation needs options.num-supernodes (how many virtual SuperNodes)"
                .into(),
        )
    })?;
    let max = i64::from(Simulation::MAX_NODES);
    if !(1..=max).contains(&num_supernodes) {
        return Err(invalid(format!(
            "num-supernodes is {num_supernodes}: a simulation has 1 to {max} virtual SuperNodes"
        )));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let total = integer("backend.init-args.num-cpus")?.unwrap_or(cores);
    if !(1..=cores).contains(&total) {
        return Err(invalid(format!(
            "backend.init-args.num-cpus is {total}: this machine has {cores} cores"
        )));
    }
    let per_client = integer("backend.client-resources.num-cpus")?.unwrap_or(1);
    if !(1..=total).contains(&per_client) {
        return Err(invalid(format!(
            "backend.client-resources.num-cpus is {per_client}: a client app may use 1 to {total} \
             cores here"
        )));
    }
    let workers = u32::try_from((total / per_client).max(1))
        .unwrap_or(Simulation::MAX_WORKERS)
        .min(Simulation::MAX_WORKERS);
    let simulation = Simulation {
        num_supernodes: num_supernodes as u32,
        workers,
    };
    simulation.check().map_err(CliError::Config)?;
    const READ: [&str; 3] = [
        "num-supernodes",
        "backend.init-args.num-cpus",
        "backend.client-resources.num-cpus",
    ];
    let ignored: Vec<&str> = flat
        .keys()
        .map(String::as_str)
        .filter(|key| !READ.contains(key))
        .collect();
    let warning = (!ignored.is_empty()).then(|| {
        format!(
            "options with no effect in this simulation (virtual SuperNodes run on threads and \
             processes here, not Ray; a client app trains on the GPU wgpu finds, else the CPU): \
             {}",
            ignored.join(", ")
        )
    });
    Ok((simulation, warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(text: &str) -> Result<(Simulation, Option<String>), CliError> {
        from_options(&toml::from_str(text).unwrap())
    }

    #[test]
    fn flowers_options_size_the_virtual_federation() {
        let (simulation, warning) = options("num-supernodes = 50").unwrap();
        assert_eq!(simulation.num_supernodes, 50);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        assert_eq!(simulation.workers, cores);
        assert_eq!(warning, None);
        let (simulation, warning) = options(
            "num-supernodes = 1000\nbackend.init-args.num-cpus = 1\n\
             backend.client-resources.num-cpus = 1.0\nbackend.client-resources.num-gpus = 0.5\n\
             backend.name = 'ray'",
        )
        .unwrap();
        assert_eq!((simulation.num_supernodes, simulation.workers), (1000, 1));
        let warning = warning.unwrap();
        assert!(
            warning.contains("backend.client-resources.num-gpus, backend.name"),
            "{warning}"
        );
    }

    #[test]
    fn impossible_federations_are_refused_with_the_option_to_change() {
        for (text, says) in [
            ("x = 1", "needs options.num-supernodes"),
            ("num-supernodes = 0", "num-supernodes is 0"),
            ("num-supernodes = 10000000", "num-supernodes is 10000000"),
            ("num-supernodes = 'ten'", "must be a whole number"),
            (
                "num-supernodes = 2\nbackend.init-args.num-cpus = 100000",
                "cores",
            ),
            (
                "num-supernodes = 2\nbackend.client-resources.num-cpus = 0",
                "client-resources.num-cpus is 0",
            ),
        ] {
            let error = options(text).unwrap_err().to_string();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}

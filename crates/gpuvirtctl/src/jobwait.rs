//! Waiting for a gpuvirtd Job: subscribes to its signals first, then reads `Finished`, so a job
//! that ends between the method reply and the subscription is still seen (no lost wake-up).
//! May import: crate::client, crate::errors.

use std::collections::HashMap;

use futures_util::StreamExt;
use gpuvirt_api as api;
use zbus::zvariant::OwnedValue;

use crate::errors::{classify, CliError};

/// How a job ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobOutcome {
    pub job: String,
    pub success: bool,
    pub error_name: String,
    pub message: String,
}

impl JobOutcome {
    /// `Ok` with the daemon's message on success, else the job's error in plain words.
    pub fn into_result(self) -> Result<String, CliError> {
        if self.success {
            return Ok(self.message);
        }
        let name = if self.error_name.is_empty() {
            format!("{}.Failed", api::FDO_ERROR_PREFIX)
        } else {
            self.error_name
        };
        Err(CliError::Dbus {
            name,
            message: self.message,
        })
    }
}

/// Waits until the job at `path` finishes; `progress` is called with each new fraction (0..=1).
pub async fn wait(
    connection: &zbus::Connection,
    path: &str,
    bus: &str,
    mut progress: impl FnMut(f64),
) -> Result<JobOutcome, CliError> {
    let call_error = |e: zbus::Error| classify(e, bus);
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(api::BUS_NAME)
        .and_then(|b| b.path(path))
        .map_err(call_error)?
        .build();
    // Subscribed before the first read: from here on no signal of this job can be missed.
    let mut stream = zbus::MessageStream::for_match_rule(rule, connection, None)
        .await
        .map_err(call_error)?;
    if let Some(outcome) = read_if_finished(connection, path, bus).await? {
        return Ok(outcome);
    }
    while let Some(message) = stream.next().await {
        let message = message.map_err(call_error)?;
        if let Some(completed) = api::Completed::from_message(message.clone()) {
            let args = completed.args().map_err(call_error)?;
            let (success, text) = (args.success, args.message);
            // The properties carry the error name the signal lacks.
            let error_name = if success {
                String::new()
            } else {
                read_all(connection, path, bus)
                    .await
                    .map(|p| p.error_name)
                    .unwrap_or_default()
            };
            return Ok(JobOutcome {
                job: path.to_owned(),
                success,
                error_name,
                message: text,
            });
        }
        if zbus::fdo::PropertiesChanged::from_message(message.clone()).is_some() {
            let Ok((_, changed, _)) =
                message
                    .body()
                    .deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
            else {
                continue;
            };
            if let Some(p) = changed.get("Progress").and_then(|v| f64::try_from(v).ok()) {
                progress(p);
            }
        }
    }
    // The stream ends only when the connection does; the job may have ended meanwhile.
    read_if_finished(connection, path, bus)
        .await?
        .ok_or_else(|| CliError::Call(format!("lost the connection to the {bus} during {path}")))
}

async fn read_all(
    connection: &zbus::Connection,
    path: &str,
    bus: &str,
) -> Result<api::JobProps, CliError> {
    api::read_job_properties(connection, path)
        .await
        .map_err(|e| classify(e, bus))
}

async fn read_if_finished(
    connection: &zbus::Connection,
    path: &str,
    bus: &str,
) -> Result<Option<JobOutcome>, CliError> {
    let props = read_all(connection, path, bus).await?;
    if !props.finished {
        return Ok(None);
    }
    Ok(Some(JobOutcome {
        job: path.to_owned(),
        success: props.success,
        error_name: props.error_name,
        message: props.message,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_job_without_a_name_is_a_plain_failure() {
        let outcome = JobOutcome {
            job: "/j/1".into(),
            success: false,
            error_name: String::new(),
            message: "unbind hung".into(),
        };
        match outcome.into_result() {
            Err(CliError::Dbus { name, message }) => {
                assert_eq!(name, "org.freedesktop.DBus.Error.Failed");
                assert_eq!(message, "unbind hung");
            }
            other => panic!("expected a D-Bus failure, got {other:?}"),
        }
    }

    #[test]
    fn failed_job_keeps_its_error_name_for_the_advice_table() {
        let outcome = JobOutcome {
            job: "/j/1".into(),
            success: false,
            error_name: "org.gpuvirt.GpuVirt1.Error.Busy".into(),
            message: "vfio in use".into(),
        };
        let e = outcome.into_result().err();
        assert!(
            matches!(&e, Some(CliError::Dbus { name, .. }) if name.ends_with(".Busy")),
            "{e:?}"
        );
    }
}

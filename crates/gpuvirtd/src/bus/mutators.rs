//! The bus side of every mutating method: decode the options, let `crate::ops` check, then
//! authorise (the bouncer's grant) and commit; slot operations become jobs. Reads and dry
//! runs are answered before the bouncer is asked.
//! May import: bus/services.rs, bus/options.rs, bus/errors.rs, bus/jobs.rs, crate::ops,
//! crate::policy, crate::auth.

use std::collections::HashMap;
use std::sync::Arc;

use gpuvirt_api::{self as api, CallError};
use gpuvirt_core::ledger::MdevStart;
use gpuvirt_core::render::RenderOptions;
use zbus::message::Header;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use super::errors::dbus_name;
use super::options::{
    bool_option, index_option, interactive, no_options, parse_options, string_option,
    tristate_option, uint_option,
};
use super::services::{caller, Services};
use crate::auth::Method;
use crate::ops::{self, Options, Outcome, SlotJob, SlotOutcome};
use crate::policy::Request;

type Opts = HashMap<String, OwnedValue>;

/// Authorises and commits `outcome` (when it was not answered at once).
async fn finish<R>(
    s: &Services,
    header: &Header<'_>,
    opts: Options,
    outcome: Outcome<R>,
) -> Result<R, CallError> {
    match outcome {
        Outcome::Answered(r) => Ok(r),
        Outcome::Commit(prepared, r) => {
            let grant = s
                .bouncer
                .authorize(&caller(header, opts.interactive), prepared.method())
                .await?;
            prepared.commit(&s.runner, grant).await?;
            Ok(r)
        }
    }
}

/// One answered-or-committed mutation in the order every one keeps: its options (only
/// `allowed` keys), `prepare` (arguments, policy, state, dry run), then the bouncer and the
/// commit ([`finish`]).
async fn mutate<R, Fut>(
    s: &Services,
    header: &Header<'_>,
    options: &Opts,
    allowed: &[&str],
    prepare: impl FnOnce(Options) -> Fut,
) -> Result<R, CallError>
where
    Fut: std::future::Future<Output = Result<Outcome<R>, crate::error::OpError>>,
{
    let started = std::time::Instant::now();
    let opts = parse_options(options, allowed)?;
    let outcome = prepare(opts).await?;
    let checked = started.elapsed();
    let result = finish(s, header, opts, outcome).await;
    tracing::debug!(member = ?header.member(), ?checked, elapsed = ?started.elapsed(), "mutation answered");
    result
}

/// `Gpu.AssignPassthrough` and `Gpu.ReturnToHost`: (job, plan).
pub async fn slot(
    s: &Arc<Services>,
    method: Method,
    address: &str,
    header: &Header<'_>,
    options: Opts,
) -> Result<(OwnedObjectPath, String), CallError> {
    let opts = parse_options(&options, &["dry-run"])?;
    let outcome = match method {
        Method::ReturnToHost => ops::prepare_return(&s.runner, address, opts).await?,
        _ => ops::prepare_assign(&s.runner, address, opts).await?,
    };
    let prepared = match outcome {
        SlotOutcome::Answered(text) => return Ok((api::no_object(), text)),
        SlotOutcome::Commit(p) => p,
    };
    let grant = s
        .bouncer
        .authorize(&caller(header, opts.interactive), prepared.method())
        .await?;
    let job = prepared.commit(&s.runner, grant)?;
    let plan = job.plan().to_owned();
    let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
    let path = start_job(s.clone(), sender, job).await?;
    Ok((path, plan))
}

/// Exports the job and runs it in a task of its own.
async fn start_job(
    s: Arc<Services>,
    sender: String,
    slot_job: SlotJob,
) -> Result<OwnedObjectPath, CallError> {
    let operation = slot_job.operation().to_owned();
    let job = s
        .jobs
        .create(
            operation.clone(),
            vec![api::gpu_path(&slot_job.address())],
            sender,
        )
        .await
        .map_err(|e| {
            CallError::Fdo(zbus::fdo::Error::Failed(format!(
                "cannot export the job: {e}"
            )))
        })?;
    let path = job.path().clone();
    tokio::spawn(async move {
        let locked = slot_job.lock(&s.runner).await;
        if !job.start() {
            drop(locked);
            job.complete(Err((
                "org.freedesktop.DBus.Error.Failed".to_string(),
                format!("{operation}: cancelled before it started"),
            )))
            .await;
            return;
        }
        job.set_progress(0.1).await;
        let result = locked.run(&s.runner).await;
        match &result {
            Ok(m) => tracing::info!(operation, "job {m}"),
            Err(e) => {
                tracing::warn!(operation, error = dbus_name(e), "job failed: {}", e.message)
            }
        }
        job.complete(result.map_err(|e| (dbus_name(&e).to_owned(), e.message)))
            .await;
    });
    Ok(path)
}

/// `ShardParent.CreateMdev(s type, s uuid, a{sv}) -> o mdev`.
pub async fn create_mdev(
    s: &Services,
    parent: &str,
    type_spec: &str,
    uuid: &str,
    header: &Header<'_>,
    options: Opts,
) -> Result<OwnedObjectPath, CallError> {
    let uuid = mutate(s, header, &options, &[], |opts| {
        ops::prepare_create(&s.runner, parent, type_spec, uuid, opts)
    })
    .await?;
    Ok(api::mdev_path(&uuid))
}

/// `Mdev.Remove(a{sv})`.
pub async fn remove_mdev(
    s: &Services,
    uuid: &str,
    header: &Header<'_>,
    options: Opts,
) -> Result<(), CallError> {
    mutate(s, header, &options, &["force"], |opts| {
        ops::prepare_remove(&s.runner, uuid, opts)
    })
    .await
}

/// `Manager.DefineMdev(s parent, s type, s uuid, a{sv}) -> s uuid`.
pub async fn define_mdev(
    s: &Services,
    parent: &str,
    type_spec: &str,
    uuid: &str,
    header: &Header<'_>,
    options: Opts,
) -> Result<String, CallError> {
    Ok(mutate(s, header, &options, &["auto"], |opts| {
        ops::prepare_define_mdev(&s.runner, parent, type_spec, uuid, opts)
    })
    .await?
    .hyphenated()
    .to_string())
}

/// `Manager.ImportMdevDefinition(s parent, s uuid, s config, a{sv}) -> s uuids`: the UUIDs
/// defined, one per line (empty for `[]`).
pub async fn import_mdev_definition(
    s: &Services,
    parent: &str,
    uuid: &str,
    config: &str,
    header: &Header<'_>,
    options: Opts,
) -> Result<String, CallError> {
    Ok(mutate(s, header, &options, &[], |opts| {
        ops::prepare_import(&s.runner, parent, uuid, config, opts)
    })
    .await?
    .iter()
    .map(|u| u.hyphenated().to_string())
    .collect::<Vec<_>>()
    .join("\n"))
}

/// `Manager.UndefineMdev(s uuid, a{sv})`.
pub async fn undefine_mdev(
    s: &Services,
    uuid: &str,
    header: &Header<'_>,
    options: Opts,
) -> Result<(), CallError> {
    mutate(s, header, &options, &["parent"], |opts| {
        // Read after the keys were checked (parse_options also checked its type).
        let parent = string_option(&options, "parent");
        async move { ops::prepare_undefine(&s.runner, uuid, parent?.as_deref(), opts).await }
    })
    .await
}

/// The options ModifyMdev takes (mdevctl modify's flags, `jsonfile` as the file's contents).
const MODIFY_OPTIONS: [&str; 11] = [
    "parent", "type", "auto", "manual", "addattr", "value", "delattr", "index", "jsonfile", "live",
    "dry-run",
];

/// `Manager.ModifyMdev(s uuid, a{sv}) -> (s parent, s config)`.
pub async fn modify_mdev(
    s: &Services,
    uuid: &str,
    header: &Header<'_>,
    options: Opts,
) -> Result<(String, String), CallError> {
    mutate(s, header, &options, &MODIFY_OPTIONS, |opts| {
        // Read after the keys and their types were checked.
        let request = modify_request(&options);
        async move { ops::prepare_modify(&s.runner, uuid, request?, opts).await }
    })
    .await
}

fn modify_request(options: &Opts) -> Result<ops::ModifyRequest, crate::error::OpError> {
    Ok(ops::ModifyRequest {
        parent: string_option(options, "parent")?,
        mdev_type: string_option(options, "type")?,
        auto: bool_option(options, "auto"),
        manual: bool_option(options, "manual"),
        addattr: string_option(options, "addattr")?,
        value: string_option(options, "value")?,
        delattr: bool_option(options, "delattr"),
        index: index_option(options)?,
        jsonfile: string_option(options, "jsonfile")?,
        live: bool_option(options, "live"),
    })
}

/// `Manager.StartMdev(s uuid, a{sv}) -> o mdev`.
pub async fn start_mdev(
    s: &Services,
    uuid: &str,
    header: &Header<'_>,
    options: Opts,
) -> Result<OwnedObjectPath, CallError> {
    let uuid = mutate(s, header, &options, &["parent"], |opts| {
        // Read after the keys were checked (parse_options also checked its type).
        let parent = string_option(&options, "parent");
        async move { ops::prepare_start(&s.runner, uuid, parent?.as_deref(), opts).await }
    })
    .await?;
    Ok(api::mdev_path(&uuid))
}

/// `Manager.StopMdev(s uuid, a{sv})`.
pub async fn stop_mdev(
    s: &Services,
    uuid: &str,
    header: &Header<'_>,
    options: Opts,
) -> Result<(), CallError> {
    mutate(s, header, &options, &[], |opts| {
        ops::prepare_stop_mdev(&s.runner, uuid, opts)
    })
    .await
}

/// `Manager.ListMdevDefinitions(a{sv})`: reads only.
pub async fn list_mdev_definitions(
    s: &Services,
    options: Opts,
) -> Result<Vec<api::MdevDefinitionWire>, CallError> {
    parse_options(&options, &[])?;
    Ok(ops::list_definitions(&s.runner)
        .await?
        .into_iter()
        .map(|d| {
            (
                d.config.uuid.hyphenated().to_string(),
                d.config.parent,
                d.config.mdev_type,
                d.owner.as_str().to_string(),
                match d.config.start {
                    MdevStart::Auto => "auto",
                    MdevStart::Manual => "manual",
                }
                .to_string(),
                d.config.attrs,
                d.active,
            )
        })
        .collect())
}

/// `Manager.RenderHostdev(s target, a{sv}) -> (s xml, as qemu_args)`: reads only.
pub async fn render_hostdev(
    s: &Services,
    target: &str,
    options: Opts,
) -> Result<(String, Vec<String>), CallError> {
    parse_options(
        &options,
        &[
            "x-vga",
            "guest-bus",
            "guest-slot",
            "qemu-bus",
            "managed",
            "display",
            "ramfb",
            "graphics",
            "display-backend",
            "render-node",
        ],
    )?;
    let render = RenderOptions {
        x_vga: bool_option(&options, "x-vga"),
        guest_bus: byte_option(&options, "guest-bus", 255)?,
        guest_slot: byte_option(&options, "guest-slot", 31)?,
        qemu_bus: string_option(&options, "qemu-bus")?,
        managed: bool_option(&options, "managed"),
        display: tristate_option(&options, "display"),
        ramfb: bool_option(&options, "ramfb"),
        graphics: choice_option(&options, "graphics")?,
        display_backend: choice_option(&options, "display-backend")?,
        render_node: string_option(&options, "render-node")?,
    };
    Ok(ops::render_hostdev(s.actor(), target, render).await?)
}

/// The string option `key`, one of the choices `T` parses (`graphics`, `display-backend`).
fn choice_option<T>(options: &Opts, key: &str) -> Result<Option<T>, CallError>
where
    T: std::str::FromStr<Err = gpuvirt_core::render::graphics::UnknownChoice>,
{
    match string_option(options, key)? {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|e| {
            crate::error::OpError::invalid_arg("options", format!("option '{key}': {e}")).into()
        }),
    }
}

/// The number option `key`, at most `max`.
fn byte_option(options: &Opts, key: &str, max: u8) -> Result<Option<u8>, CallError> {
    match uint_option(options, key)? {
        None => Ok(None),
        Some(n) => match u8::try_from(n) {
            Ok(b) if b <= max => Ok(Some(b)),
            _ => Err(crate::error::OpError::invalid_arg(
                "options",
                format!("option '{key}': {n} is past {max}"),
            )
            .into()),
        },
    }
}

/// Biggest policy text `ValidatePolicy` accepts: real policies are a few kilobytes.
const MAX_POLICY_BYTES: usize = 1 << 20;

/// `Manager.ValidatePolicy(s toml) -> as`: reads only.
pub async fn validate_policy(s: &Services, toml: &str) -> Result<Vec<String>, CallError> {
    if toml.len() > MAX_POLICY_BYTES {
        return Err(CallError::invalid_arg(
            "toml",
            format!(
                "{} bytes is more than the {MAX_POLICY_BYTES} a policy may have",
                toml.len()
            ),
        ));
    }
    let text = toml.to_owned();
    Ok(s.actor()
        .policy(|reply| Request::Validate { text, reply })
        .await?)
}

/// `Manager.PlanPolicy(a{sv}) -> (s, s)`: reads only.
pub async fn plan_policy(s: &Services, options: Opts) -> Result<(String, String), CallError> {
    no_options("PlanPolicy", &options)?;
    Ok(s.actor().policy(|reply| Request::Plan { reply }).await??)
}

/// `Manager.ReloadPolicy(a{sv})`: authorised like the device mutators (the subject is the
/// caller's bus name).
pub async fn reload_policy(
    s: &Services,
    header: &Header<'_>,
    options: Opts,
) -> Result<(), CallError> {
    let grant = s
        .bouncer
        .authorize(
            &caller(header, interactive(&options)?),
            Method::ReloadPolicy,
        )
        .await?;
    no_options("ReloadPolicy", &options)?;
    Ok(s.actor()
        .policy(|reply| Request::Reload { grant, reply })
        .await??)
}

/// `Manager.Reconcile(a{sv}) -> (b, s)`: synchronous on purpose, unlike AssignPassthrough's
/// Job. Its reply is the apply's report (done / failed / not attempted), which a Job's
/// `Finished` would only repeat; the apply already serialises with every mutator on the
/// ledger lock (waiting at most 10 s, then `Busy`); and `gpuvirtctl policy apply` prints
/// the (success, report) pair it returns.
pub async fn reconcile(
    s: &Services,
    header: &Header<'_>,
    options: Opts,
) -> Result<(bool, String), CallError> {
    let grant = s
        .bouncer
        .authorize(&caller(header, interactive(&options)?), Method::Reconcile)
        .await?;
    no_options("Reconcile", &options)?;
    Ok(s.actor()
        .policy(|reply| Request::Reconcile { grant, reply })
        .await??)
}

/// A `Can*` query's answer for the caller of `header` and polkit `action`: `yes`,
/// `challenge` or `no`. A read: no grant is made and nothing is prompted.
pub async fn capability(services: &Services, header: &Header<'_>, action: &str) -> String {
    let sender = header.sender().map(|s| s.as_str());
    services
        .bouncer
        .capability(sender, action)
        .await
        .as_str()
        .to_owned()
}

//! `gpuvirtctl mdev ...`: mediated devices the mdevctl way. gpuvirtctl's own forms (`create
//! PARENT TYPE`, `define PARENT TYPE`, `list [--defined] [--json]`, `export`/`import
//! --mdevctl`) and mdevctl's command line beside them (`define|undefine|modify|start|stop|
//! list|types` with `-p/-t/-u/-a/-m`, `--jsonfile`, `-d`, `--dumpjson`, `--addattr/--delattr
//! --index --value`), printing what mdevctl 1.2 prints (docs/cli.md has the mapping).
//! The verbs live by concern: `lifecycle` (changes), `listing` (list, types), `transfer`
//! (export, import), `shared`. May import: crate::client, crate::errors, crate::table,
//! crate::view, its own children.

mod lifecycle;
mod listing;
mod shared;
mod transfer;

use crate::client::Ctx;
use crate::errors::CliError;
use lifecycle::{Define, Modify};
use listing::MdevctlList;
use shared::{either, parse_uuid};

#[derive(Debug, clap::Subcommand)]
pub enum MdevCommand {
    /// Create a mediated device now (transient, like `mdevctl start -p PARENT -t TYPE`).
    Create {
        /// The parent device: a PCI address or a parent's name (`gpuvirtctl types`).
        parent: String,
        /// The mdev type, e.g. nvidia-300.
        mdev_type: String,
        /// The new device's UUID (default: a fresh one).
        #[arg(long)]
        uuid: Option<String>,
    },
    /// Remove a mediated device (a defined one keeps its definition).
    Remove {
        uuid: String,
        /// Also remove a device another tool created.
        #[arg(long)]
        force: bool,
    },
    /// Define a persistent mediated device: `define PARENT TYPE` (auto unless --manual, prints
    /// the UUID) or mdevctl's `define -p PARENT -t TYPE [-u UUID] [-a]` (manual unless
    /// --auto, prints a generated UUID only), `define -u UUID` (an active device as it is) or
    /// `define -p PARENT --jsonfile FILE`.
    Define {
        /// The parent device: a PCI address or a parent's name.
        #[arg(value_name = "PARENT", conflicts_with = "parent")]
        parent_arg: Option<String>,
        /// The mdev type, e.g. nvidia-300.
        #[arg(
            value_name = "TYPE",
            conflicts_with = "mdev_type",
            requires = "parent_arg"
        )]
        type_arg: Option<String>,
        /// The parent device (mdevctl's form).
        #[arg(short, long)]
        parent: Option<String>,
        /// The mdev type (mdevctl's form).
        #[arg(short = 't', long = "type", value_name = "TYPE")]
        mdev_type: Option<String>,
        /// The device's UUID (default: a fresh one).
        #[arg(short, long)]
        uuid: Option<String>,
        /// Create it whenever the parent is present.
        #[arg(short, long, conflicts_with = "manual")]
        auto: bool,
        /// Create it only on `gpuvirtctl mdev start`.
        #[arg(short, long)]
        manual: bool,
        /// Type, start mode and attributes from mdevctl's JSON (a definition file).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["type_arg", "mdev_type", "auto", "manual"])]
        jsonfile: Option<String>,
    },
    /// Drop a definition (an active device stays, as a transient one).
    Undefine {
        #[arg(
            value_name = "UUID",
            conflicts_with = "uuid",
            required_unless_present = "uuid"
        )]
        uuid_arg: Option<String>,
        /// The device's UUID (mdevctl's form).
        #[arg(short, long)]
        uuid: Option<String>,
        /// The parent whose definition to drop, for a UUID defined under several parents.
        #[arg(short, long)]
        parent: Option<String>,
    },
    /// Change a definition, as `mdevctl modify`: type, start mode, one attribute added
    /// (`--addattr NAME --value V [--index I]`) or deleted (`--delattr [--index I]`, else the
    /// last), or all of it from `--jsonfile`. A running device is not changed.
    Modify {
        #[arg(
            value_name = "UUID",
            conflicts_with = "uuid",
            required_unless_present = "uuid"
        )]
        uuid_arg: Option<String>,
        #[arg(short, long)]
        uuid: Option<String>,
        /// The parent of the definition, for a UUID defined under several parents.
        #[arg(short, long)]
        parent: Option<String>,
        /// A new mdev type.
        #[arg(short = 't', long = "type", value_name = "TYPE")]
        mdev_type: Option<String>,
        /// Add an attribute (written to the device after each start, in list order).
        #[arg(
            long,
            value_name = "NAME",
            conflicts_with = "delattr",
            requires = "value"
        )]
        addattr: Option<String>,
        /// Delete an attribute: the one at --index, else the last.
        #[arg(long)]
        delattr: bool,
        /// Where to add or delete an attribute (0 is the first).
        #[arg(short, long)]
        index: Option<u32>,
        /// The value of the attribute --addattr adds.
        #[arg(long, value_name = "VALUE", requires = "addattr")]
        value: Option<String>,
        /// Start it whenever the parent is present.
        #[arg(short, long, conflicts_with = "manual")]
        auto: bool,
        /// Start it only on `mdev start`.
        #[arg(short, long)]
        manual: bool,
        /// Replace type, start mode and attributes with mdevctl's JSON (a definition file).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["mdev_type", "addattr", "delattr", "index", "auto", "manual"])]
        jsonfile: Option<String>,
        /// The definition is what changes (mdevctl's -d/--defined; always so here).
        #[arg(short, long)]
        defined: bool,
        /// Change the running device too: refused (gpuvirt changes definitions only).
        #[arg(short, long)]
        live: bool,
        /// Print the definition it would become (mdevctl's file), change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Create a defined mediated device (gpuvirt's, or mdevctl's from /etc/mdevctl.d), or with
    /// `-p PARENT -t TYPE` a transient one (its generated UUID is printed).
    Start {
        #[arg(value_name = "UUID", conflicts_with = "uuid")]
        uuid_arg: Option<String>,
        #[arg(short, long)]
        uuid: Option<String>,
        /// The parent whose definition to start, for a UUID defined under several parents.
        #[arg(short, long)]
        parent: Option<String>,
        /// With --parent: start a transient device of this type.
        #[arg(short = 't', long = "type", value_name = "TYPE", requires = "parent")]
        mdev_type: Option<String>,
        /// A transient device from mdevctl's JSON: refused (define it, then start it).
        #[arg(long, value_name = "FILE", conflicts_with = "mdev_type")]
        jsonfile: Option<String>,
    },
    /// Remove a defined mediated device, keeping its definition.
    Stop {
        #[arg(
            value_name = "UUID",
            conflicts_with = "uuid",
            required_unless_present = "uuid"
        )]
        uuid_arg: Option<String>,
        #[arg(short, long)]
        uuid: Option<String>,
    },
    /// List mediated devices. Bare, or with --defined: gpuvirtctl's table (UUID, parent,
    /// type, state; definitions with start mode and owner). With any of mdevctl's flags
    /// (-d, --dumpjson, -v, -u, -p) or --mdevctl: exactly what mdevctl 1.2 prints.
    List {
        /// Persistent definitions (gpuvirt's and mdevctl's) instead of active devices.
        #[arg(short, long)]
        defined: bool,
        /// mdevctl's JSON (`mdevctl list --dumpjson`).
        #[arg(long, conflicts_with_all = ["json", "table"])]
        dumpjson: bool,
        /// With mdevctl's lines: each device's attributes.
        #[arg(short, long, conflicts_with_all = ["json", "table"])]
        verbose: bool,
        /// Only this device (mdevctl's listing).
        #[arg(short, long, conflicts_with_all = ["json", "table"])]
        uuid: Option<String>,
        /// Only devices of this parent (mdevctl's listing).
        #[arg(short, long, conflicts_with_all = ["json", "table"])]
        parent: Option<String>,
        /// gpuvirtctl's table (name, driver, group; with --defined: start mode and owner)
        /// instead of mdevctl's lines.
        #[arg(long)]
        table: bool,
        /// gpuvirtctl's JSON.
        #[arg(long)]
        json: bool,
    },
    /// The mdev types of every parent, as `mdevctl types` prints them.
    Types {
        /// Only this parent's types.
        #[arg(short, long)]
        parent: Option<String>,
        /// mdevctl's JSON (`mdevctl types --dumpjson`).
        #[arg(long)]
        dumpjson: bool,
    },
    /// Print definitions as mdevctl JSON, with no trailing newline (the bytes of mdevctl's
    /// files): one device's file contents, or every definition (and every active device
    /// without one) as `mdevctl list --dumpjson` prints them (`[]` when there are none). A
    /// UUID defined under several parents prints that document, holding each.
    Export {
        /// mdevctl's format (`mdevctl define --jsonfile` reads it); the only format.
        #[arg(long, required = true)]
        mdevctl: bool,
        /// One device (default: all).
        uuid: Option<String>,
        /// Only the definitions under this parent.
        #[arg(short, long)]
        parent: Option<String>,
    },
    /// Define mediated devices from mdevctl JSON (like `mdevctl define --jsonfile`), all or
    /// none; they are gpuvirt's definitions from then on. `[]` is nothing to do.
    Import {
        /// mdevctl's format; the only format.
        #[arg(long, required = true)]
        mdevctl: bool,
        /// A definition file (`/etc/mdevctl.d/PARENT/UUID`) or `mdevctl list --dumpjson`
        /// output; `-` reads standard input.
        file: String,
        /// The parent of a single definition (default: the file's directory name).
        #[arg(long)]
        parent: Option<String>,
        /// The UUID of a single definition (default: the file's name).
        #[arg(long)]
        uuid: Option<String>,
    },
}

impl MdevCommand {
    /// The verbs that only read (no polkit, no password prompt).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            MdevCommand::List { .. } | MdevCommand::Types { .. } | MdevCommand::Export { .. }
        ) || matches!(self, MdevCommand::Modify { dry_run: true, .. })
    }
}

pub async fn run(ctx: &Ctx<'_>, command: MdevCommand) -> Result<(), CliError> {
    match command {
        MdevCommand::Create {
            parent,
            mdev_type,
            uuid,
        } => lifecycle::create(ctx, &parent, &mdev_type, uuid.as_deref(), true).await,
        MdevCommand::Remove { uuid, force } => lifecycle::remove(ctx, &uuid, force).await,
        MdevCommand::Define {
            parent_arg,
            type_arg,
            parent,
            mdev_type,
            uuid,
            auto,
            manual,
            jsonfile,
        } => {
            let mdevctl_form = parent_arg.is_none();
            let define = Define {
                parent: either(parent, parent_arg),
                mdev_type: either(mdev_type, type_arg),
                uuid,
                jsonfile,
                auto: (auto || manual).then_some(auto),
                mdevctl_form,
            };
            lifecycle::define(ctx, define).await
        }
        MdevCommand::Undefine {
            uuid_arg,
            uuid,
            parent,
        } => {
            let uuid = either(uuid, uuid_arg).unwrap_or_default();
            lifecycle::undefine(ctx, &uuid, parent.as_deref()).await
        }
        MdevCommand::Modify {
            uuid_arg,
            uuid,
            parent,
            mdev_type,
            addattr,
            delattr,
            index,
            value,
            auto,
            manual,
            jsonfile,
            defined: _,
            live,
            dry_run,
        } => {
            let modify = Modify {
                uuid: either(uuid, uuid_arg).unwrap_or_default(),
                parent,
                mdev_type,
                auto,
                manual,
                addattr,
                value,
                delattr,
                index,
                jsonfile,
                live,
                dry_run,
            };
            lifecycle::modify(ctx, modify).await
        }
        MdevCommand::Start {
            uuid_arg,
            uuid,
            parent,
            mdev_type,
            jsonfile,
        } => {
            let uuid = either(uuid, uuid_arg);
            lifecycle::start(
                ctx,
                uuid.as_deref(),
                parent.as_deref(),
                mdev_type.as_deref(),
                jsonfile.as_deref(),
            )
            .await
        }
        MdevCommand::Stop { uuid_arg, uuid } => {
            lifecycle::stop(ctx, &either(uuid, uuid_arg).unwrap_or_default()).await
        }
        MdevCommand::List {
            defined,
            dumpjson,
            verbose,
            uuid,
            parent,
            table,
            json,
        } => {
            // mdevctl's lines unless gpuvirtctl's own table or JSON is asked for, so every
            // `mdevctl list ...` line works with `gpuvirtctl mdev list ...`.
            if table || json {
                return if defined {
                    listing::defined_table(ctx, json).await
                } else {
                    listing::table(ctx, json).await
                };
            }
            let opts = MdevctlList {
                defined,
                dumpjson,
                verbose,
                uuid: uuid.as_deref().map(parse_uuid).transpose()?,
                parent,
            };
            listing::mdevctl_list(ctx, &opts).await
        }
        MdevCommand::Types { parent, dumpjson } => {
            listing::mdevctl_types(ctx, parent.as_deref(), dumpjson).await
        }
        MdevCommand::Export {
            mdevctl: _,
            uuid,
            parent,
        } => transfer::export(ctx, uuid.as_deref(), parent.as_deref()).await,
        MdevCommand::Import {
            mdevctl: _,
            file,
            parent,
            uuid,
        } => transfer::import(ctx, &file, parent.as_deref(), uuid.as_deref()).await,
    }
}

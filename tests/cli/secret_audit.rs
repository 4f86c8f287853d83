//! The secret audit: a job run, a verify and a restore with every way of
//! passing a secret at once — repository passphrases from a file, a
//! command, systemd's credentials directory and `$HOLDFAST_PASSPHRASE`;
//! `$HOLDFAST_FROM_PASSPHRASE`, `$HOLDFAST_NEW_PASSPHRASE`; AWS keys in the
//! environment; a PostgreSQL password in a `password_env` variable and a
//! MariaDB password in a file — while hooks (one as `nobody`) and notify
//! commands dump their environment and argv, and every process on the
//! machine is watched. No secret may appear in any child's argv or
//! environment, in holdfast's output, in any file it wrote, or in the
//! repository; a hook that drops privileges gets a minimal environment.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::jobs_util::{JobEnv, MyDatabase, MyUser, PgDatabase, PgRole, Ran, processes, q, shq, unique};

/// Files under `dir` whose bytes contain `needle`, except `allowed`.
fn files_containing(dir: &Path, needle: &str, allowed: &[PathBuf]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && !allowed.contains(&e.path()) {
                let bytes = fs::read(e.path()).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(e.path());
                }
            }
        }
    }
    hits
}

/// Run `args` while watching every process but holdfast itself for any of
/// `secrets` in its argv or environment; the run and what was seen.
fn run_watching(env: &JobEnv, mut cmd: std::process::Command, secrets: &[String]) -> (Ran, BTreeSet<String>) {
    cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    let mut run = env.start(cmd);
    let me = run.pid();
    let holdfast = crate::util::holdfast_bin().display().to_string();
    let mut seen = BTreeSet::new();
    // The shared test passphrase is in every test's environment: only this
    // run's descendants are held to it. The other secrets are this test's
    // own: any process holding one leaked it.
    let shared = crate::util::PASSPHRASE;
    while run.is_running() {
        for (pid, argv, environ) in processes() {
            // holdfast itself, and its children between fork and exec (they
            // show holdfast's argv and environment until they exec; a child
            // that drops privileges is not dumpable then, so no other user
            // can read them). A process caught in the middle of an exec
            // shows no argv yet: read it again, now that its environment
            // was read.
            let argv = if argv.is_empty() { read_argv(pid) } else { argv };
            if pid == me || pid == std::process::id() || argv.starts_with(&holdfast) {
                continue;
            }
            for s in secrets.iter().filter(|s| s.as_str() != shared || descends_from(pid, me)) {
                if argv.contains(s.as_str()) || environ.contains(s.as_str()) {
                    let parent = if descends_from(pid, me) { "a descendant of holdfast" } else { "another process" };
                    seen.insert(format!("{pid} ({parent}): {argv:?} holds {s}"));
                }
            }
        }
    }
    (run.wait(), seen)
}

/// `pid`'s argv as text (empty when it is gone).
fn read_argv(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default()
}

/// Whether `pid` is `ancestor` or one of its descendants (by parent pids).
fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut at = pid;
    for _ in 0..64 {
        if at == ancestor {
            return true;
        }
        let Ok(stat) = fs::read_to_string(format!("/proc/{at}/stat")) else { return false };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some(ppid) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        else {
            return false;
        };
        if ppid <= 1 {
            return false;
        }
        at = ppid;
    }
    false
}

/// The variables a hook running as another user may see: the documented
/// minimal set, holdfast's run variables, its own `env`, and what `sh`
/// itself sets.
fn allowed_for_a_dropped_hook(name: &str) -> bool {
    ["PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME", "SHELL", "APP_MODE", "PWD", "SHLVL", "_", "OLDPWD"]
        .contains(&name)
        || name.starts_with("HOLDFAST_")
}

#[test]
fn no_secret_reaches_a_child_an_output_a_file_or_the_repository() {
    let env = JobEnv::new();
    let secret = |tag: &str| format!("S3CRET-{}", unique(tag));
    let (pass_cmd, pass_cred, pass_env) = (secret("cmd"), secret("cred"), secret("env"));
    let (from_pass, new_pass) = (secret("from"), secret("new"));
    let (aws_id, aws_secret, aws_token) = (secret("awsid"), secret("awssecret"), secret("awstoken"));
    let (pg_pass, my_pass) = (secret("pg"), secret("my"));
    let main_pass = crate::util::PASSPHRASE.to_string();

    let role = PgRole::create("audit", &pg_pass);
    let pg = PgDatabase::create_owned_by("audit", Some(&role.name));
    pg.sql(&format!(
        "CREATE TABLE t (v text);\nINSERT INTO t VALUES ('pg row');\nALTER TABLE t OWNER TO {};",
        role.name
    ));
    let my = MyDatabase::create("audit");
    my.sql("CREATE TABLE t (v TEXT);\nINSERT INTO t VALUES ('my row');");
    let my_user = MyUser::create("audit", &my_pass, &my.name);
    // `verify` loads the dumps into scratch databases as these users.
    pg.server.sql("postgres", &format!("ALTER ROLE {} CREATEDB;", role.name));
    my.server.sql(None, &format!("GRANT ALL PRIVILEGES ON *.* TO '{}'@'%';", my_user.name));

    // Secret sources, each a file only its owner reads.
    let write_secret = |rel: &str, text: &str| {
        let p = env.path(rel);
        fs::write(&p, format!("{text}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let cmd_file = write_secret("second-pass", &pass_cmd);
    let creds = env.path("credentials");
    fs::create_dir(&creds).unwrap();
    let cred_file = creds.join("holdfast-passphrase-third");
    fs::write(&cred_file, &pass_cred).unwrap();
    let my_pass_file = write_secret("my.pass", &my_pass);
    // Hook output goes where `nobody` may write.
    let audit = tempfile::tempdir().unwrap();
    fs::set_permissions(audit.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let out = |name: &str| shq(audit.path().join(name));
    fs::create_dir(env.path("data")).unwrap();
    fs::write(env.path("data/file"), b"just data").unwrap();

    env.config(&format!(
        "[repositories.second]\npath = \"second\"\npassphrase_command = [\"cat\", {cmd}]\n\n\
         [repositories.third]\npath = \"third\"\n\n\
         [repositories.fourth]\npath = \"fourth\"\n\n\
         [jobs.app]\nrepositories = [\"main\", \"second\", \"third\", \"fourth\"]\n\
         files = {{ paths = [\"data\"] }}\n\
         notify = [{{ events = [\"start\", \"success\", \"failure\", \"warning\"], command = [\"sh\", \"-c\", {notify}] }}]\n\n\
         [[jobs.app.databases]]\nkind = \"postgresql\"\nname = {pgname}\nhost = {pghost}\nport = {pgport}\npassword_env = \"AUDIT_PG_PASSWORD\"\nuser = {pguser}\n\n\
         [[jobs.app.databases]]\nkind = \"mysql\"\nname = {myname}\nhost = {myhost}\nport = {myport}\nuser = {myuser}\npassword_file = {mypass}\n\n\
         [[jobs.app.hooks]]\nphase = \"before\"\nrun = {root_hook}\n\n\
         [[jobs.app.hooks]]\nphase = \"before\"\nuser = \"nobody\"\nenv = {{ APP_MODE = \"maintenance\" }}\nrun = {nobody_hook}\n\n\
         [[jobs.app.hooks]]\nphase = \"finally\"\nrun = {finally_hook}\n",
        cmd = q(&cmd_file),
        notify = q(format!("env > {}; echo \"$0 $@\" >> {}", out("notify-{{event}}.env"), out("argv"))),
        pgname = q(&pg.name),
        pghost = q(&pg.server.host),
        pgport = pg.server.port,
        pguser = q(&role.name),
        myname = q(&my.name),
        myhost = q(&my.server.host),
        myport = my.server.port,
        myuser = q(&my_user.name),
        mypass = q(&my_pass_file),
        root_hook = q(format!("env > {}; cat /proc/$$/cmdline >> {}", out("root-hook.env"), out("argv"))),
        nobody_hook = q(format!("env > {}", out("nobody-hook.env"))),
        finally_hook = q(format!("env > {}", out("finally-hook.env"))),
    ));
    let with_secrets = |mut c: std::process::Command| {
        c.env("HOLDFAST_PASSPHRASE", &pass_env)
            .env("HOLDFAST_FROM_PASSPHRASE", &from_pass)
            .env("HOLDFAST_NEW_PASSPHRASE", &new_pass)
            .env("AWS_ACCESS_KEY_ID", &aws_id)
            .env("AWS_SECRET_ACCESS_KEY", &aws_secret)
            .env("AWS_SESSION_TOKEN", &aws_token)
            .env("AUDIT_PG_PASSWORD", &pg_pass)
            .env("CREDENTIALS_DIRECTORY", &creds);
        c
    };
    for repo in ["main", "second", "third", "fourth"] {
        let init = with_secrets(env.cmd(["--repo", repo, "init"])).output().unwrap();
        assert!(init.status.success(), "{repo}: {}", String::from_utf8_lossy(&init.stderr));
    }
    let secrets = [
        &pass_cmd,
        &pass_cred,
        &pass_env,
        &from_pass,
        &new_pass,
        &aws_id,
        &aws_secret,
        &aws_token,
        &pg_pass,
        &my_pass,
        &main_pass,
    ]
    .map(|s| s.to_string());

    let mut runs = Vec::new();
    runs.push(run_watching(&env, with_secrets(env.cmd(["run", "app"])), &secrets));
    runs.push(run_watching(&env, with_secrets(env.cmd(["verify", "--every-repository", "app"])), &secrets));
    let restore = env.cmd(["restore", "app", "--files", "--to"]);
    let mut restore = with_secrets(restore);
    restore.arg(env.path("restored"));
    runs.push(run_watching(&env, restore, &secrets));

    let mut leaks = Vec::new();
    for (ran, seen) in &runs {
        assert!(ran.status.success(), "{ran:?}");
        leaks.extend(seen.iter().map(|p| format!("a process held a secret: {p}")));
        for s in &secrets {
            if ran.stdout.contains(s.as_str()) || ran.stderr.contains(s.as_str()) {
                leaks.push(format!("holdfast's output holds {s}"));
            }
        }
    }
    // Where the test itself put the secrets may hold them; nothing else.
    let allowed = [env.path("passphrase"), cmd_file.clone(), cred_file.clone(), my_pass_file.clone()];
    for s in &secrets {
        for f in files_containing(env.path("").as_path(), s, &allowed) {
            leaks.push(format!("{} holds {s}", f.display()));
        }
        for f in files_containing(audit.path(), s, &[]) {
            leaks.push(format!("{} (a hook's or notify command's environment or argv) holds {s}", f.display()));
        }
    }
    // No secret variable reaches any child, by name.
    for f in fs::read_dir(audit.path()).unwrap().flatten() {
        let text = fs::read_to_string(f.path()).unwrap();
        for var in [
            "HOLDFAST_PASSPHRASE=",
            "HOLDFAST_FROM_PASSPHRASE=",
            "HOLDFAST_NEW_PASSPHRASE=",
            "AWS_SECRET_ACCESS_KEY=",
            "AWS_ACCESS_KEY_ID=",
            "AWS_SESSION_TOKEN=",
            "AUDIT_PG_PASSWORD=",
        ] {
            if text.lines().any(|l| l.starts_with(var)) {
                leaks.push(format!("{} has {var}", f.path().display()));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));

    // Every hook and notification ran, and the one that dropped privileges
    // got the minimal environment (plus the run's variables).
    for name in ["root-hook.env", "nobody-hook.env", "finally-hook.env", "notify-start.env", "notify-success.env"] {
        assert!(audit.path().join(name).exists(), "{name} was not written");
    }
    let nobody = fs::read_to_string(audit.path().join("nobody-hook.env")).unwrap();
    let names: Vec<&str> = nobody.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    let extra: Vec<&&str> = names.iter().filter(|n| !allowed_for_a_dropped_hook(n)).collect();
    assert!(extra.is_empty(), "a hook run as nobody got more than the minimal environment: {extra:?}\n{nobody}");
    for expected in
        ["HOME=/nonexistent", "USER=nobody", "HOLDFAST_JOB=app", "HOLDFAST_PHASE=before", "APP_MODE=maintenance"]
    {
        assert!(nobody.lines().any(|l| l == expected), "{expected} missing:\n{nobody}");
    }
    let root = fs::read_to_string(audit.path().join("root-hook.env")).unwrap();
    assert!(root.lines().any(|l| l.starts_with("HOLDFAST_RUN_ID=")), "{root}");
    assert!(root.contains("PATH="), "a root hook keeps holdfast's environment (without secrets): {root}");
}

# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_procflow_global_optspecs
    string join \n v/verbose h/help V/version
end

function __fish_procflow_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_procflow_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_procflow_using_subcommand
    set -l cmd (__fish_procflow_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c procflow -n "__fish_procflow_needs_command" -s v -l verbose -d 'Log more (repeat for debug output, including libbpf\'s)'
complete -c procflow -n "__fish_procflow_needs_command" -s h -l help -d 'Print help'
complete -c procflow -n "__fish_procflow_needs_command" -s V -l version -d 'Print version'
complete -c procflow -n "__fish_procflow_needs_command" -f -a "run" -d 'Monitor: load the kernel programs and record every flow'
complete -c procflow -n "__fish_procflow_needs_command" -f -a "report" -d 'Report on the flow history: top processes, remotes, ports over time'
complete -c procflow -n "__fish_procflow_needs_command" -f -a "rules" -d 'Check a rules file, or explain which rule decides a connection'
complete -c procflow -n "__fish_procflow_needs_command" -f -a "config" -d 'Check or print the settings of `procflow run`: its configuration file (/etc/procflow/procflow.toml) under its command line'
complete -c procflow -n "__fish_procflow_needs_command" -f -a "top" -d 'Live view: processes, their connections, remote hosts, ports and blocked attempts, redrawn every second (keys: ? for help)'
complete -c procflow -n "__fish_procflow_needs_command" -f -a "ps" -d 'The processes using the network now, with totals since start and rates, from the daemon (or, as root without one, standalone)'
complete -c procflow -n "__fish_procflow_needs_command" -f -a "flows" -d 'The open flows, with their process, from the daemon (or, as root without one, standalone)'
complete -c procflow -n "__fish_procflow_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c procflow -n "__fish_procflow_using_subcommand run" -l log -d 'Write flow records as JSON lines to FILE ("-" for standard output). A new file is created readable by root only (mode 0600)' -r -F
complete -c procflow -n "__fish_procflow_using_subcommand run" -l log-max-size -d 'Rotate the log when it would grow past this size (e.g. 100M, 1G); 0 turns rotation off' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l log-keep -d 'Rotated logs to keep (FILE.1 ... FILE.N)' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l db -d 'The flow history database' -r -F
complete -c procflow -n "__fish_procflow_using_subcommand run" -l retain -d 'Delete history older than this (e.g. 30d, 12h); samples older than two days are rolled up into hourly totals' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l fold-under -d 'Fold flows shorter than this into their series (no row of their own in the history, their bytes, packets and count still in every report) while more than --fold-above new flows a second arrive; 0s keeps a row for every flow. Blocked flows are never folded' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l fold-above -d 'New flows a second at or below which every flow keeps its row' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l interval -d 'Also write a cumulative record for every open flow this often: seconds (10, 0.5) or a duration (30s, 5m)' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l duration -d 'Stop by itself after this long: seconds (3600) or a duration (1h); SIGINT and SIGTERM stop it too' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l ring-buffer -d 'Size of the ring buffer the kernel\'s records come through: a power of two from 64K to 1G. Records that find it full are lost and counted (events_lost); counters are not' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l rules -d 'Allow or block connections by the rules in FILE (see docs/rules.md). SIGHUP reloads the file; a refused file leaves the rules in force' -r -F
complete -c procflow -n "__fish_procflow_using_subcommand run" -l resolver -d 'A name server for --resolve (ADDR or ADDR:PORT; repeat for several). Default: the nameserver lines of /etc/resolv.conf' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l api -d 'Serve the local API (docs/api.md) on this Unix socket' -r -F
complete -c procflow -n "__fish_procflow_using_subcommand run" -l api-group -d 'The group whose members may read the API (the socket\'s group)' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l metrics -d 'Serve Prometheus metrics at http://ADDR/metrics (for example 127.0.0.1:9464; docs/fleet.md). Anyone who can reach ADDR sees which programs use the network: keep it on loopback or a management network' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l metrics-top -d 'How many executables (and cgroups) get series of their own; the rest are summed into exe="other" (cgroup="other")' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l ipfix -d 'Export flow records over IPFIX (RFC 7011) to this collector (HOST:PORT), with the process of each flow (docs/fleet.md). The records carry command lines and user names in clear text: send them only over a network you trust' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l ipfix-transport -d 'How IPFIX messages travel to the collector' -r -f -a "udp\t'One message a datagram (RFC 7011 §10.3)'
tcp\t'A stream to the collector, reconnected when it breaks (§10.4)'"
complete -c procflow -n "__fish_procflow_using_subcommand run" -l ipfix-domain -d 'The IPFIX observation domain id in every message header' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l ipfix-template-refresh -d 'Send the IPFIX templates again this often over UDP (over TCP they go once per connection): seconds or a duration' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l ipfix-active-timeout -d 'A flow still active after this long is exported with what it did since its last export, and goes on in a new IPFIX flow' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l ipfix-idle-timeout -d 'A flow whose counters did not grow for this long ends its IPFIX flow; traffic that resumes starts a new one' -r
complete -c procflow -n "__fish_procflow_using_subcommand run" -l config -d 'Read the settings of `procflow run` from FILE (default: /etc/procflow/procflow.toml, when it exists); options given on the command line override it. SIGHUP reads it again' -r -F
complete -c procflow -n "__fish_procflow_using_subcommand run" -l no-db -d 'Do not record to the database'
complete -c procflow -n "__fish_procflow_using_subcommand run" -l enforce-existing -d 'When rules are loaded or reloaded, also close the established TCP connections they block (sock_diag SOCK_DESTROY)'
complete -c procflow -n "__fish_procflow_using_subcommand run" -l resolve -d 'Name remotes that no DNS answer named: from /etc/hosts, then by reverse (PTR) lookups. Off by default: without it procflow sends no queries'
complete -c procflow -n "__fish_procflow_using_subcommand run" -l no-api -d 'Do not serve the local API'
complete -c procflow -n "__fish_procflow_using_subcommand run" -l no-config -d 'Read no configuration file, not even the default one'
complete -c procflow -n "__fish_procflow_using_subcommand run" -s v -l verbose -d 'Log more (repeat for debug output, including libbpf\'s)'
complete -c procflow -n "__fish_procflow_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c procflow -n "__fish_procflow_using_subcommand report" -l db -d 'The procflow database to read (default: the `db` of /etc/procflow/procflow.toml when it sets one)' -r -F
complete -c procflow -n "__fish_procflow_using_subcommand report" -l since -d 'Start of the window: a duration back from now (30m, 1h, 7d), an RFC 3339 timestamp (2026-11-26T09:00:00Z) or a date (2026-11-26, midnight UTC)' -r
complete -c procflow -n "__fish_procflow_using_subcommand report" -l until -d 'End of the window (excluded), in the same forms as --since; default now' -r
complete -c procflow -n "__fish_procflow_using_subcommand report" -l by -d 'Group by one or more of these (comma-separated); default exe' -r -f -a "exe\t'Full path of the executable (or why it is not known)'
process\t'One process (pid and command name)'
user\t'User name (or uid when the name is unknown)'
cgroup\t'cgroup path (container, service)'
remote\t'Remote IP address'
host\t'Remote host name (from DNS answers), or the address when unknown'
port\t'Service port: the remote port of outgoing flows, the local port of incoming ones'
proto\t'tcp, udp, icmp, ...'
direction\t'out, in or unknown'
rule\t'The rule that decided (its name, `(default)`, or `-` when no rules decided); with --verdicts, the rule that blocked'"
complete -c procflow -n "__fish_procflow_using_subcommand report" -l top -d 'Show only the N groups with the most traffic (charts: default 8)' -r
complete -c procflow -n "__fish_procflow_using_subcommand report" -l exe -d 'Only this executable: a full path, or a file name (curl)' -r
complete -c procflow -n "__fish_procflow_using_subcommand report" -l host -d 'Only this remote host name and its subdomains (example.com)' -r
complete -c procflow -n "__fish_procflow_using_subcommand report" -l remote -d 'Only this remote address or network (192.0.2.1, 10.0.0.0/8)' -r
complete -c procflow -n "__fish_procflow_using_subcommand report" -l port -d 'Only this service port: a number or a name (443, https)' -r
complete -c procflow -n "__fish_procflow_using_subcommand report" -l proto -d 'Only this protocol (tcp, udp, icmp, icmpv6)' -r
complete -c procflow -n "__fish_procflow_using_subcommand report" -l user -d 'Only this user: a name or a uid' -r
complete -c procflow -n "__fish_procflow_using_subcommand report" -l rule -d 'Only what this rule decided (its name; `(default)` for the default)' -r
complete -c procflow -n "__fish_procflow_using_subcommand report" -l action -d 'Only what the rules allowed, or blocked' -r -f -a "allow\t''
block\t''"
complete -c procflow -n "__fish_procflow_using_subcommand report" -l format -d 'Output format' -r -f -a "table\t'An aligned table with human units'
json\t'One JSON document with raw numbers'
csv\t'CSV with a header line and raw numbers'"
complete -c procflow -n "__fish_procflow_using_subcommand report" -l bucket -d 'Width of the time buckets of --timeline and --chart (10s, 1m, 1h, 1d); default: chosen from the window' -r
complete -c procflow -n "__fish_procflow_using_subcommand report" -l chart -d 'Draw a stacked-area chart of the top groups over time to FILE.svg or FILE.png (chosen by the extension; PNG needs a system font, e.g. Debian\'s fonts-dejavu-core)' -r -F
complete -c procflow -n "__fish_procflow_using_subcommand report" -l verdicts -d 'Blocked attempts instead of traffic: one line per attempt, or with --by (or --timeline) the number of attempts per group'
complete -c procflow -n "__fish_procflow_using_subcommand report" -l rules-changes -d 'Loads and reloads of the rules file (accepted or refused) instead of traffic'
complete -c procflow -n "__fish_procflow_using_subcommand report" -l timeline -d 'Totals per time bucket instead of over the whole window'
complete -c procflow -n "__fish_procflow_using_subcommand report" -s v -l verbose -d 'Log more (repeat for debug output, including libbpf\'s)'
complete -c procflow -n "__fish_procflow_using_subcommand report" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c procflow -n "__fish_procflow_using_subcommand rules; and not __fish_seen_subcommand_from check explain help" -s v -l verbose -d 'Log more (repeat for debug output, including libbpf\'s)'
complete -c procflow -n "__fish_procflow_using_subcommand rules; and not __fish_seen_subcommand_from check explain help" -s h -l help -d 'Print help'
complete -c procflow -n "__fish_procflow_using_subcommand rules; and not __fish_seen_subcommand_from check explain help" -f -a "check" -d 'Validate a rules file and print a summary; exit 1 with every error (file:line:column) if it is refused'
complete -c procflow -n "__fish_procflow_using_subcommand rules; and not __fish_seen_subcommand_from check explain help" -f -a "explain" -d 'Say which rule decides a connection, and why each earlier rule does not match'
complete -c procflow -n "__fish_procflow_using_subcommand rules; and not __fish_seen_subcommand_from check explain help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from check" -s v -l verbose -d 'Log more (repeat for debug output, including libbpf\'s)'
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from explain" -l exe -d 'Full path of the process\'s executable' -r
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from explain" -l remote -d 'The remote end: IP:PORT (`10.0.0.1:443`, `[2001:db8::1]:53`), or IP alone for ICMP. Needed unless `--family packet`' -r
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from explain" -l family -d 'ip (an IPv4 or IPv6 socket) or packet (a packet socket sending frames: decided by who sends, without remote, protocol or ports)' -r
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from explain" -l proto -d 'tcp, udp, icmp, icmpv6 or an IP protocol number' -r
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from explain" -l user -d 'User name or uid (default: yours)' -r
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from explain" -l direction -d 'out (this host connects) or in (a peer connects here)' -r
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from explain" -l comm -d 'Task name (default: the executable\'s file name, cut to 15 bytes)' -r
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from explain" -l cgroup -d 'The process\'s cgroup v2 path (`/system.slice/foo.service`); without it, no rule with a `cgroup` condition matches' -r
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from explain" -l local-port -d 'This host\'s port' -r
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from explain" -s v -l verbose -d 'Log more (repeat for debug output, including libbpf\'s)'
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from explain" -s h -l help -d 'Print help'
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from help" -f -a "check" -d 'Validate a rules file and print a summary; exit 1 with every error (file:line:column) if it is refused'
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from help" -f -a "explain" -d 'Say which rule decides a connection, and why each earlier rule does not match'
complete -c procflow -n "__fish_procflow_using_subcommand rules; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c procflow -n "__fish_procflow_using_subcommand config; and not __fish_seen_subcommand_from check show help" -s v -l verbose -d 'Log more (repeat for debug output, including libbpf\'s)'
complete -c procflow -n "__fish_procflow_using_subcommand config; and not __fish_seen_subcommand_from check show help" -s h -l help -d 'Print help'
complete -c procflow -n "__fish_procflow_using_subcommand config; and not __fish_seen_subcommand_from check show help" -f -a "check" -d 'Check a configuration file (default: /etc/procflow/procflow.toml) and print the effective settings of `procflow run`, with where each one comes from. Options of `procflow run` after `--` override the file, as they would on its command line'
complete -c procflow -n "__fish_procflow_using_subcommand config; and not __fish_seen_subcommand_from check show help" -f -a "show" -d 'Print the effective settings of `procflow run` as a configuration file (TOML), from the configuration file (default: /etc/procflow/procflow.toml) and the options after `--`'
complete -c procflow -n "__fish_procflow_using_subcommand config; and not __fish_seen_subcommand_from check show help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c procflow -n "__fish_procflow_using_subcommand config; and __fish_seen_subcommand_from check" -s v -l verbose -d 'Log more (repeat for debug output, including libbpf\'s)'
complete -c procflow -n "__fish_procflow_using_subcommand config; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c procflow -n "__fish_procflow_using_subcommand config; and __fish_seen_subcommand_from show" -s v -l verbose -d 'Log more (repeat for debug output, including libbpf\'s)'
complete -c procflow -n "__fish_procflow_using_subcommand config; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c procflow -n "__fish_procflow_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "check" -d 'Check a configuration file (default: /etc/procflow/procflow.toml) and print the effective settings of `procflow run`, with where each one comes from. Options of `procflow run` after `--` override the file, as they would on its command line'
complete -c procflow -n "__fish_procflow_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "show" -d 'Print the effective settings of `procflow run` as a configuration file (TOML), from the configuration file (default: /etc/procflow/procflow.toml) and the options after `--`'
complete -c procflow -n "__fish_procflow_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c procflow -n "__fish_procflow_using_subcommand top" -l api -d 'The daemon\'s API socket (default: the `api` of /etc/procflow/procflow.toml when it sets one)' -r -F
complete -c procflow -n "__fish_procflow_using_subcommand top" -l interval -d 'Redraw this often: seconds (1, 0.5) or a duration (2s)' -r
complete -c procflow -n "__fish_procflow_using_subcommand top" -s v -l verbose -d 'Log more (repeat for debug output, including libbpf\'s)'
complete -c procflow -n "__fish_procflow_using_subcommand top" -s h -l help -d 'Print help'
complete -c procflow -n "__fish_procflow_using_subcommand ps" -l api -d 'The daemon\'s API socket (default: the `api` of /etc/procflow/procflow.toml when it sets one)' -r -F
complete -c procflow -n "__fish_procflow_using_subcommand ps" -l json -d 'Print the API\'s JSON (the snapshot\'s `processes`)'
complete -c procflow -n "__fish_procflow_using_subcommand ps" -s v -l verbose -d 'Log more (repeat for debug output, including libbpf\'s)'
complete -c procflow -n "__fish_procflow_using_subcommand ps" -s h -l help -d 'Print help'
complete -c procflow -n "__fish_procflow_using_subcommand flows" -l api -d 'The daemon\'s API socket (default: the `api` of /etc/procflow/procflow.toml when it sets one)' -r -F
complete -c procflow -n "__fish_procflow_using_subcommand flows" -l pid -d 'Only the flows of this process' -r
complete -c procflow -n "__fish_procflow_using_subcommand flows" -l exe -d 'Only the flows of this executable (full path)' -r
complete -c procflow -n "__fish_procflow_using_subcommand flows" -l json -d 'Print the API\'s JSON (the snapshot\'s `flows`)'
complete -c procflow -n "__fish_procflow_using_subcommand flows" -s v -l verbose -d 'Log more (repeat for debug output, including libbpf\'s)'
complete -c procflow -n "__fish_procflow_using_subcommand flows" -s h -l help -d 'Print help'
complete -c procflow -n "__fish_procflow_using_subcommand help; and not __fish_seen_subcommand_from run report rules config top ps flows help" -f -a "run" -d 'Monitor: load the kernel programs and record every flow'
complete -c procflow -n "__fish_procflow_using_subcommand help; and not __fish_seen_subcommand_from run report rules config top ps flows help" -f -a "report" -d 'Report on the flow history: top processes, remotes, ports over time'
complete -c procflow -n "__fish_procflow_using_subcommand help; and not __fish_seen_subcommand_from run report rules config top ps flows help" -f -a "rules" -d 'Check a rules file, or explain which rule decides a connection'
complete -c procflow -n "__fish_procflow_using_subcommand help; and not __fish_seen_subcommand_from run report rules config top ps flows help" -f -a "config" -d 'Check or print the settings of `procflow run`: its configuration file (/etc/procflow/procflow.toml) under its command line'
complete -c procflow -n "__fish_procflow_using_subcommand help; and not __fish_seen_subcommand_from run report rules config top ps flows help" -f -a "top" -d 'Live view: processes, their connections, remote hosts, ports and blocked attempts, redrawn every second (keys: ? for help)'
complete -c procflow -n "__fish_procflow_using_subcommand help; and not __fish_seen_subcommand_from run report rules config top ps flows help" -f -a "ps" -d 'The processes using the network now, with totals since start and rates, from the daemon (or, as root without one, standalone)'
complete -c procflow -n "__fish_procflow_using_subcommand help; and not __fish_seen_subcommand_from run report rules config top ps flows help" -f -a "flows" -d 'The open flows, with their process, from the daemon (or, as root without one, standalone)'
complete -c procflow -n "__fish_procflow_using_subcommand help; and not __fish_seen_subcommand_from run report rules config top ps flows help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c procflow -n "__fish_procflow_using_subcommand help; and __fish_seen_subcommand_from rules" -f -a "check" -d 'Validate a rules file and print a summary; exit 1 with every error (file:line:column) if it is refused'
complete -c procflow -n "__fish_procflow_using_subcommand help; and __fish_seen_subcommand_from rules" -f -a "explain" -d 'Say which rule decides a connection, and why each earlier rule does not match'
complete -c procflow -n "__fish_procflow_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "check" -d 'Check a configuration file (default: /etc/procflow/procflow.toml) and print the effective settings of `procflow run`, with where each one comes from. Options of `procflow run` after `--` override the file, as they would on its command line'
complete -c procflow -n "__fish_procflow_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "show" -d 'Print the effective settings of `procflow run` as a configuration file (TOML), from the configuration file (default: /etc/procflow/procflow.toml) and the options after `--`'

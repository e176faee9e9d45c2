// `insitu status`: live counters from a running insitud, read over its
// control socket.
//
// Protocol (owned by the daemon): connect to the Unix socket, send
// "status\n", read one JSON object until the daemon closes the connection.
// The object is {"device", "export", "listen", "read_only", "superblock",
// "volume", "server"} or {"error": "..."} (daemon/insitud.cc).  The text view looks fields up one
// by one and shows "-" for any it cannot find, so a daemon one version older or newer still gets a
// useful report instead of an error.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/util.h"

namespace insitu::cli {
namespace {

using nlohmann::json;

// A daemon that accepts but never answers (stuck, or not insitud at all)
// must not hang a monitoring script forever.
constexpr int kTimeoutS = 10;

class SocketFd {
 public:
  explicit SocketFd(int fd) : fd_(fd) {}
  ~SocketFd() {
    if (fd_ >= 0) close(fd_);
  }
  SocketFd(const SocketFd&) = delete;
  SocketFd& operator=(const SocketFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

Status QueryDaemon(const std::string& path, std::string* reply) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument("socket path " + path + " is too long (Unix sockets allow " +
                                   std::to_string(sizeof(addr.sun_path) - 1) + " bytes)");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const SocketFd sock(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (sock.get() < 0) return Status::FromErrno(errno, "cannot create a socket");
  const timeval timeout{kTimeoutS, 0};
  if (setsockopt(sock.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)) != 0 ||
      setsockopt(sock.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout)) != 0) {
    return Status::FromErrno(errno, "cannot set a socket timeout");
  }
  if (connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    return Status::IOError("cannot connect to " + path + ": " + std::strerror(err) +
                               " (is insitud running with --control " + path + "?)",
                           err);
  }
  static constexpr std::string_view kRequest = "status\n";
  for (size_t sent = 0; sent < kRequest.size();) {
    const ssize_t n =
        send(sock.get(), kRequest.data() + sent, kRequest.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, "cannot send the request to " + path);
    sent += static_cast<size_t>(n);
  }
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(sock.get(), buf, sizeof(buf), 0);
    if (n == 0) return Status::OK();
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return Status::IOError("no complete reply from " + path + " within " +
                             std::to_string(kTimeoutS) + " s; the daemon may be hung");
    }
    if (n < 0) return Status::FromErrno(errno, "cannot read the reply from " + path);
    reply->append(buf, static_cast<size_t>(n));
  }
}

// obj[key], or null when the daemon did not send it.
const json& Field(const json& obj, const char* key) {
  static const json kMissing;
  if (!obj.is_object()) return kMissing;
  const auto it = obj.find(key);
  return it == obj.end() ? kMissing : *it;
}

std::string Text(const json& v) { return v.is_string() ? v.get<std::string>() : "-"; }
std::string Count(const json& v) {
  return v.is_number_unsigned() ? std::to_string(v.get<uint64_t>()) : "-";
}
std::string Bytes(const json& v) {
  return v.is_number_unsigned() ? HumanBytes(v.get<uint64_t>()) : "-";
}
std::string Fixed2(double v) {
  char out[32];
  std::snprintf(out, sizeof(out), "%.2f", v);
  return out;
}

std::string Duration(uint64_t s) {
  std::string out;
  const uint64_t parts[] = {s / 86400, s / 3600 % 24, s / 60 % 60, s % 60};
  const char* units[] = {"d", "h", "m", "s"};
  for (size_t i = 0; i < 4; ++i) {
    if (parts[i] != 0 || !out.empty() || i == 3) {
      out += (out.empty() ? "" : " ") + std::to_string(parts[i]) + units[i];
    }
  }
  return out;
}

void PrintText(const json& r) {
  const auto sb = [&](const char* key) -> const json& {
    return Field(Field(r, "superblock"), key);
  };
  const auto vol = [&](const char* key) -> const json& { return Field(Field(r, "volume"), key); };
  const auto srv = [&](const char* key) -> const json& { return Field(Field(r, "server"), key); };
  const auto line = [](const std::string& label, const std::string& value) {
    std::cout << std::left << std::setw(21) << label << value << "\n";
  };

  line("device:", Text(Field(r, "device")));
  // NBD clients reach the export with the empty name when they give none.
  const std::string export_name = Text(Field(r, "export"));
  line("export:", export_name.empty() ? "\"\" (the default export)" : export_name);
  std::string listen;
  for (const json& spec : Field(r, "listen")) listen += (listen.empty() ? "" : ", ") + Text(spec);
  line("listening on:", listen.empty() ? "-" : listen);
  const json& read_only = Field(r, "read_only");
  line("read-only:", read_only.is_boolean() ? (read_only.get<bool>() ? "yes" : "no") : "-");
  line("uuid:", Text(sb("uuid")));
  std::string codec = Text(sb("codec"));
  if (sb("codec_level").is_number_integer() && sb("codec_level").get<int>() != 0) {
    codec += ":" + std::to_string(sb("codec_level").get<int>());
  }
  line("compression:", codec);
  std::string mode = Text(sb("meta_mode"));
  if (mode == "writeback" && sb("meta_interval_s").is_number_unsigned()) {
    mode += ", every " + Count(sb("meta_interval_s")) + " s";
  }
  line("metadata mode:", mode);
  const json& blocks = vol("data_blocks");
  line("logical size:", blocks.is_number_unsigned()
                            ? HumanBytes(blocks.get<uint64_t>() * format::kBlockSize) + " (" +
                                  Count(blocks) + " blocks)"
                            : "-");
  line("blocks compressed:", Count(vol("blocks_compressed")));
  line("blocks raw:", Count(vol("blocks_raw")));
  line("blocks unwritten:", Count(vol("blocks_unwritten")));
  // Space the stored blocks take on the device: compressed payloads plus
  // raw and patched blocks.  Against the 4 KiB each stored block would take otherwise,
  // this is the capacity saving an operator plans with.
  if (vol("payload_sectors").is_number_unsigned() && vol("blocks_raw").is_number_unsigned() &&
      vol("blocks_compressed").is_number_unsigned()) {
    const uint64_t raw = vol("blocks_raw").get<uint64_t>();
    const uint64_t patched =
        vol("blocks_patched").is_number_unsigned() ? vol("blocks_patched").get<uint64_t>() : 0;
    const uint64_t used = vol("payload_sectors").get<uint64_t>() * format::kSectorSize +
                          (raw + patched) * format::kBlockSize;
    const uint64_t logical = (vol("blocks_compressed").get<uint64_t>() + raw) * format::kBlockSize;
    std::string value = HumanBytes(used) + " holding " + HumanBytes(logical);
    if (logical != 0) {
      value += " (" +
               Fixed2(100.0 * (1.0 - static_cast<double>(used) / static_cast<double>(logical))) +
               "% saved)";
    }
    line("space used:", value);
  } else {
    line("space used:", "-");
  }
  line("compression ratio:",
       vol("compression_ratio").is_number() ? Fixed2(vol("compression_ratio").get<double>()) : "-");
  line("logical written:", Bytes(vol("logical_bytes_written")));
  line("payload written:", Bytes(vol("payload_bytes_written")));
  line("metadata written:", Bytes(vol("meta_bytes_written")));
  line("units saved by refits:",
       Count(vol("refit_units_saved")) + " (" + Count(vol("refits")) + " retries)");
  line("read errors:", Count(vol("read_errors")));
  line("unclean shutdowns:", Count(sb("unclean_count")));
  std::string connections = Count(srv("connections"));
  if (srv("connections_total").is_number_unsigned()) {
    connections += " (" + Count(srv("connections_total")) + " since start)";
  }
  line("connections:", connections);
  if (srv("inline_readers").is_number_unsigned()) {
    line("inline readers:", Count(srv("inline_readers")));
  }
  line("requests in flight:", Count(srv("requests_in_flight")));
  line("requests total:", Count(srv("requests_total")));
  if (srv("pool_handoffs").is_number_unsigned()) {
    line("pool hand-overs:", Count(srv("pool_handoffs")));
  }
  if (srv("poll_hits").is_number_unsigned()) {
    line("requests found polling:", Count(srv("poll_hits")));
  }
  line("read since start:", Bytes(srv("bytes_read")));
  line("written since start:", Bytes(srv("bytes_written")));
  line("uptime:",
       srv("uptime_s").is_number_unsigned() ? Duration(srv("uptime_s").get<uint64_t>()) : "-");
}

}  // namespace

void AddStatusOptions(CLI::App* cmd, StatusArgs* args) {
  cmd->add_option("SOCKET", args->socket,
                  "The daemon's control socket (the path given to insitud --control)")
      ->required();
  cmd->add_flag("--json", args->json, "Print the daemon's reply as JSON, unchanged in content");
  cmd->footer(R"(Examples:
  insitu status /tmp/vol.ctl
  insitu status --json /tmp/vol.ctl | jq .volume.compression_ratio

Exit status: 0 success, 1 error (daemon not reachable, no answer within
10 s, or an error reply), 2 invalid command line.  See insitu(8).)");
}

int RunStatus(const std::string& prog, const StatusArgs& args) {
  std::string raw;
  if (const Status st = QueryDaemon(args.socket, &raw); !st.ok()) {
    PrintError(prog, st.message());
    return kExitError;
  }
  const json reply = json::parse(raw, nullptr, /*allow_exceptions=*/false);
  if (reply.is_discarded() || !reply.is_object()) {
    PrintError(prog, "the reply from " + args.socket +
                         " is not a JSON object; is it an insitud control socket?");
    return kExitError;
  }
  if (const auto err = reply.find("error"); err != reply.end()) {
    PrintError(prog, "insitud reported an error: " + Text(*err));
    return kExitError;
  }
  if (args.json) {
    std::cout << reply.dump(2) << "\n";
  } else {
    PrintText(reply);
  }
  return kExitOk;
}

}  // namespace insitu::cli

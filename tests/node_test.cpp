// The DICOM node under hostile or careless peers: idle TCP connections, a
// stalled half A-ASSOCIATE-RQ, many idle peers, and the connection limits.
// Other senders (DCMTK's echoscu and storescu) must be served at once.
#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <pqxx/pqxx>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/service_harness.h"

using firstread::testing::connect_loopback;
using firstread::testing::FirstreadService;
using firstread::testing::run;
using firstread::testing::wait_until;

namespace {

const std::string kCtSmall = "/usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm";

void put16(std::vector<unsigned char>& b, size_t v) {
  b.push_back(static_cast<unsigned char>(v >> 8));
  b.push_back(static_cast<unsigned char>(v));
}

void put_item(std::vector<unsigned char>& b, unsigned char type, const std::vector<unsigned char>& body) {
  b.push_back(type);
  b.push_back(0);
  put16(b, body.size());
  b.insert(b.end(), body.begin(), body.end());
}

std::vector<unsigned char> bytes(const std::string& s) { return {s.begin(), s.end()}; }

// A valid A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing Verification in implicit VR
// little endian, written out byte by byte as a peer would send it.
std::vector<unsigned char> associate_rq(const std::string& called, const std::string& calling) {
  std::vector<unsigned char> body;
  put16(body, 1);  // protocol version
  put16(body, 0);
  auto ae = [&](std::string t) {
    t.resize(16, ' ');
    body.insert(body.end(), t.begin(), t.end());
  };
  ae(called);
  ae(calling);
  body.insert(body.end(), 32, 0);
  put_item(body, 0x10, bytes("1.2.840.10008.3.1.1.1"));
  std::vector<unsigned char> pc = {1, 0, 0, 0};
  put_item(pc, 0x30, bytes("1.2.840.10008.1.1"));
  put_item(pc, 0x40, bytes("1.2.840.10008.1.2"));
  put_item(body, 0x20, pc);
  std::vector<unsigned char> user;
  put_item(user, 0x51, {0x00, 0x00, 0x40, 0x00});
  put_item(user, 0x52, bytes("1.2.826.0.1.3680043.9.7.18"));
  put_item(body, 0x50, user);
  std::vector<unsigned char> pdu = {0x01, 0x00};
  const uint32_t n = static_cast<uint32_t>(body.size());
  for (int shift = 24; shift >= 0; shift -= 8) pdu.push_back(static_cast<unsigned char>(n >> shift));
  pdu.insert(pdu.end(), body.begin(), body.end());
  return pdu;
}

// The first byte the service answers (0x02 A-ASSOCIATE-AC, 0x03 -RJ), 0 if it
// closed the connection, -1 if nothing came within timeout_ms.
int first_reply_byte(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return -1;
  unsigned char b = 0;
  const ssize_t n = recv(fd, &b, 1, 0);
  return n == 1 ? b : 0;
}

double seconds_of(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// echoscu and storescu from 127.0.0.1 must both be served within 2 s.
void expect_others_served(const FirstreadService& s, const std::string& situation) {
  const std::string port = std::to_string(s.port());
  int echo_rc = -1, store_rc = -1;
  std::string store_out;
  const double echo_s = seconds_of([&] { echo_rc = run("echoscu -to 10 -aec FIRSTREAD 127.0.0.1 " + port).exit_code; });
  const double store_s = seconds_of([&] {
    auto r = run("storescu -to 10 -aec FIRSTREAD 127.0.0.1 " + port + " " + kCtSmall);
    store_rc = r.exit_code;
    store_out = r.output;
  });
  EXPECT_EQ(echo_rc, 0) << situation;
  EXPECT_EQ(store_rc, 0) << situation << ": " << store_out;
  EXPECT_LT(echo_s, 2.0) << situation << ": echoscu took " << echo_s << " s";
  EXPECT_LT(store_s, 2.0) << situation << ": storescu took " << store_s << " s";
  std::cout << situation << ": echoscu " << echo_s << " s, storescu " << store_s << " s\n";
}

}  // namespace

TEST(Node, IdleConnectionsAndAStalledRequestBlockNoOtherSender) {
  FirstreadService s;  // the default dicom configuration
  s.start();
  const int port = s.port();

  int idle = connect_loopback(port, "127.0.0.2");
  ASSERT_GE(idle, 0);
  expect_others_served(s, "one idle TCP connection");

  // Half of a valid A-ASSOCIATE-RQ, then silence.
  const auto rq = associate_rq("FIRSTREAD", "STALLER");
  int half = connect_loopback(port, "127.0.0.3");
  ASSERT_GE(half, 0);
  ASSERT_EQ(write(half, rq.data(), rq.size() / 2), static_cast<ssize_t>(rq.size() / 2));
  expect_others_served(s, "a stalled half A-ASSOCIATE-RQ");

  // Twenty idle peers, each from its own address.
  std::vector<int> peers;
  for (int i = 0; i < 20; ++i) {
    int fd = connect_loopback(port, "127.0.1." + std::to_string(i + 1));
    ASSERT_GE(fd, 0);
    peers.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  expect_others_served(s, "20 idle peers");

  // The stalled peer sends the rest late: it is still served (its deadline,
  // dicom.acse_timeout_seconds, is 30 s).
  ASSERT_EQ(write(half, rq.data() + rq.size() / 2, rq.size() - rq.size() / 2),
            static_cast<ssize_t>(rq.size() - rq.size() / 2));
  EXPECT_EQ(first_reply_byte(half, 5000), 0x02) << "the completed request was not accepted\n" << s.log();

  // A peer that connects and leaves without a byte is not a refused association.
  close(idle);
  close(half);
  for (int fd : peers) close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_TRUE(s.echo());
  const std::string log = s.log();
  EXPECT_EQ(log.find("called AE '' is not"), std::string::npos) << log;
  EXPECT_EQ(log.find("refused association from 127.0.1."), std::string::npos) << log;
  EXPECT_EQ(log.find("closed a connection"), std::string::npos) << "no limit should have applied:\n" << log;
}

// One sample `name value` of the service's /metrics (Prometheus text), or -1.
static double scraped(const std::string& series) {
  const auto r = run("curl -s http://127.0.0.1:" + std::to_string(firstread::testing::test_port(2)) + "/metrics");
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);)
    if (line.compare(0, series.size() + 1, series + " ") == 0) return std::stod(line.substr(series.size() + 1));
  return -1;
}

TEST(Node, ConnectionLimitsApplyBeforeAnyByteIsRead) {
  FirstreadService s("", "  max_associations: 2\n  max_pending_associations: 3\n  max_associations_per_host: 2\n");
  s.start();
  const int port = s.port();
  const auto rq = associate_rq("FIRSTREAD", "HOLDER");
  // The start-up check's echo association may still be closing on a loaded machine.
  ASSERT_TRUE(wait_until([] { return scraped("firstread_dicom_associations_active") == 0; }, 10)) << s.log();

  // dicom.max_associations: two held associations, the third is rejected.
  std::vector<int> held;
  for (const char* host : {"127.0.0.2", "127.0.0.3"}) {
    int fd = connect_loopback(port, host);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, rq.data(), rq.size()), static_cast<ssize_t>(rq.size()));
    ASSERT_EQ(first_reply_byte(fd, 5000), 0x02) << host << "\n" << s.log();
    held.push_back(fd);
  }
  auto third = run("echoscu -to 5 -aec FIRSTREAD 127.0.0.1 " + std::to_string(port));
  EXPECT_NE(third.exit_code, 0);
  EXPECT_NE(third.output.find("Association Rejected"), std::string::npos) << third.output;
  EXPECT_NE(s.log().find("2 associations already active (dicom.max_associations)"), std::string::npos) << s.log();
  close(held[0]);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_TRUE(s.echo()) << "a slot freed by a closed association must be usable again\n" << s.log();
  close(held[1]);

  // dicom.max_associations_per_host: the third connection from one address is
  // closed at once, while another address is still served.
  std::vector<int> from_one;
  for (int i = 0; i < 2; ++i) from_one.push_back(connect_loopback(port, "127.0.0.8"));
  int over = connect_loopback(port, "127.0.0.8");
  ASSERT_GE(over, 0);
  EXPECT_EQ(first_reply_byte(over, 2000), 0) << "the connection over the per-host limit was not closed at once";
  close(over);
  EXPECT_NE(s.log().find("closed a connection from 127.0.0.8 at once: 2 connections from this host already "
                         "(dicom.max_associations_per_host)"),
            std::string::npos)
      << s.log();
  EXPECT_TRUE(s.echo());
  for (int fd : from_one) close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));

  // dicom.max_pending_associations: three connections still negotiating fill it;
  // the fourth is closed at once with a line naming its address.
  std::vector<int> pending;
  for (const char* host : {"127.0.0.4", "127.0.0.5", "127.0.0.6"}) pending.push_back(connect_loopback(port, host));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  int fourth = connect_loopback(port, "127.0.0.7");
  ASSERT_GE(fourth, 0);
  EXPECT_EQ(first_reply_byte(fourth, 2000), 0);
  close(fourth);
  EXPECT_NE(s.log().find("closed a connection from 127.0.0.7 at once: 3 connections are still negotiating "
                         "(dicom.max_pending_associations)"),
            std::string::npos)
      << s.log();
  // Both closures and the connections still negotiating are in /metrics.
  EXPECT_EQ(scraped("firstread_dicom_associations_negotiating"), 3);
  EXPECT_EQ(scraped("firstread_dicom_connections_closed_over_limit_total"), 2);
  for (int fd : pending) close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_TRUE(s.echo()) << "slots of closed connections must be given back\n" << s.log();
  EXPECT_EQ(scraped("firstread_dicom_associations_negotiating"), 0);
}

TEST(Node, APeerThatNeverCompletesItsRequestIsClosedAtItsDeadline) {
  FirstreadService s("", "  acse_timeout_seconds: 2\n");
  s.start();
  const auto rq = associate_rq("FIRSTREAD", "STALLER");
  int half = connect_loopback(s.port(), "127.0.0.9");
  ASSERT_GE(half, 0);
  ASSERT_EQ(write(half, rq.data(), 10), 10);
  // Closed by the service after about 2 s, not 60.
  EXPECT_EQ(first_reply_byte(half, 8000), 0);
  close(half);
  EXPECT_NE(s.log().find("127.0.0.9 sent no complete A-ASSOCIATE-RQ within 2 s"), std::string::npos) << s.log();
  EXPECT_TRUE(s.echo());
}

namespace {

// The first log line holding `what` (for the test's output).
std::string line_with(const std::string& log, const std::string& what) {
  const auto at = log.find(what);
  if (at == std::string::npos) return "";
  const auto start = log.rfind('\n', at);
  const auto end = log.find('\n', at);
  return log.substr(start == std::string::npos ? 0 : start + 1, end == std::string::npos ? end : end - start - 1);
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t pos = 0; (pos = text.find(what, pos)) != std::string::npos; pos += what.size()) ++n;
  return n;
}

}  // namespace

TEST(Node, TwoNodesOnOneVolumeNeverStepOnEachOther) {
  FirstreadService a;
  a.start();
  // B shares A's storage volume and database; it receives nothing, it only
  // starts (and reconciles) again and again while A ingests.
  FirstreadService b(a, 4, "  reconcile_grace_seconds: 2\n");
  b.start();
  std::vector<std::vector<std::pair<std::string, std::string>>> studies;
  for (int i = 0; i < 4; ++i)
    studies.push_back(firstread::testing::make_instances(kCtSmall, a.dir() + "/send" + std::to_string(i), 500));
  std::vector<std::string> outputs(2);
  std::vector<int> exit_codes(2, -1);
  std::atomic<int> running{2};
  std::vector<std::thread> senders;
  for (int p = 0; p < 2; ++p) {
    senders.emplace_back([&, p] {
      std::string cmd = "storescu -v -aec FIRSTREAD 127.0.0.1 " + std::to_string(a.port());
      for (int st = p * 2; st < p * 2 + 2; ++st)
        for (const auto& f : studies[st]) cmd += " " + f.first;
      auto r = run(cmd);
      outputs[p] = r.output;
      exit_codes[p] = r.exit_code;
      --running;
    });
  }
  int restarts = 0;
  while (running > 0) {
    if (restarts % 2 == 0)
      b.terminate();
    else
      b.kill9();  // a crashed node leaves its lock file behind, unlocked
    b.start();
    ++restarts;
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // let B's reconciliation finish sometimes
  }
  for (auto& t : senders) t.join();
  std::cout << "B restarted " << restarts << " times while A ingested 2000 instances\n";
  EXPECT_GE(restarts, 3) << "the ingest ended too soon to test anything";

  for (int p = 0; p < 2; ++p) {
    EXPECT_EQ(exit_codes[p], 0) << outputs[p].substr(outputs[p].size() > 3000 ? outputs[p].size() - 3000 : 0);
    EXPECT_EQ(count_of(outputs[p], "Received Store Response (Success)"), 1000u) << "sender " << p;
  }
  auto conn = a.connect();
  pqxx::work t(conn);
  EXPECT_EQ(t.exec1("SELECT count(*) FROM api.instances")[0].as<int>(), 2000);
  t.commit();
  const std::string log_a = a.log(), log_b = b.log();
  EXPECT_EQ(log_a.find("answered 0x"), std::string::npos) << "A refused an instance:\n" << log_a.substr(0, 4000);
  // B has no model directory (its inference worker says so); any error of the
  // node's own parts would be a false alarm about A's work.
  for (const std::string component : {"reconcile", "storage", "ingest", "DICOM"})
    EXPECT_FALSE(std::regex_search(log_b, std::regex("error +\\[[0-9]+\\] " + component + ":")))
        << "B logged a " << component << " error:\n" << log_b;
  EXPECT_EQ(log_b.find("the index lists"), std::string::npos) << log_b;
  EXPECT_EQ(log_b.find("found on disk without its row"), std::string::npos) << "B indexed A's files in flight\n"
                                                                             << log_b;
  EXPECT_GE(count_of(log_b, "reconcile: 0 files indexed, 0 unreadable, 0 rows without file"), 1u)
      << "no reconciliation of B's finished while A ingested\n"
      << log_b;
}

TEST(Node, AnSrWhoseReportNeverCommittedIsRemovedAtStartUp) {
  FirstreadService s("", "", "  reconcile_grace_seconds: 1\n");
  s.start();
  EXPECT_EQ(s.terminate(), 0);
  const std::string sr_sample = "/usr/lib/python3/dist-packages/pydicom/data/test_files/test-SR.dcm";
  const std::string old_sr = s.storage() + "/reports/1.2.3/1.2.3.4/1.2.3.4.5.dcm";
  const std::string young_sr = s.storage() + "/reports/1.2.3/1.2.3.4/1.2.3.4.6.dcm";
  const std::string not_sr = s.storage() + "/reports/1.2.3/1.2.3.9/1.2.3.9.1.dcm";
  for (const auto& [from, to] : {std::pair{sr_sample, old_sr}, {sr_sample, young_sr}, {kCtSmall, not_sr}}) {
    std::filesystem::create_directories(std::filesystem::path(to).parent_path());
    std::filesystem::copy_file(from, to);
  }
  std::filesystem::last_write_time(old_sr, std::filesystem::file_time_type::clock::now() - std::chrono::hours(1));
  s.start();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  // The first start's summary is in the log too: wait for the second one.
  while (count_of(s.log(), "uncommitted SRs removed") < 2 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_NE(s.log().find("2 uncommitted SRs removed"), std::string::npos) << s.log();
  EXPECT_FALSE(std::filesystem::exists(old_sr));
  EXPECT_FALSE(std::filesystem::exists(young_sr)) << "an SR too young at the walk is looked at again after the grace";
  EXPECT_TRUE(std::filesystem::exists(not_sr)) << "only SR objects are removed";
  EXPECT_TRUE(s.echo());
}

namespace {

// What storescu -v saw acknowledged with Success, as SOP Instance UIDs.
std::set<std::string> acknowledged_in(const std::string& output,
                                      const std::vector<std::pair<std::string, std::string>>& files) {
  std::map<std::string, std::string> sop_of;
  for (const auto& f : files) sop_of[f.first] = f.second;
  std::set<std::string> out;
  std::istringstream lines(output);
  std::string line, current;
  while (std::getline(lines, line)) {
    if (auto p = line.find("Sending file: "); p != std::string::npos) current = line.substr(p + 14);
    if (line.find("Received Store Response (Success)") != std::string::npos && sop_of.count(current))
      out.insert(sop_of[current]);
  }
  return out;
}

// The SOP Instance UIDs of `sops` that api.instances does not list.
std::vector<std::string> missing_from_index(const FirstreadService& s, const std::set<std::string>& sops) {
  std::vector<std::string> out;
  auto conn = s.connect();
  pqxx::work t(conn);
  std::set<std::string> indexed;
  for (const auto& row : t.exec("SELECT sop_instance_uid FROM api.instances")) indexed.insert(row[0].c_str());
  for (const auto& sop : sops)
    if (!indexed.count(sop)) out.push_back(sop);
  return out;
}

std::string pg_ctl() {
  auto r = run("ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1");
  std::string path = r.output;
  while (!path.empty() && (path.back() == '\n' || path.back() == ' ')) path.pop_back();
  return path;
}

// pg_ctl on the service's embedded cluster, run as the cluster's owner.
firstread::testing::CommandResult cluster_ctl(const FirstreadService& s, const std::string& action) {
  const std::string data = s.storage() + "/pg/data";
  return run("runuser -u $(stat -c %U '" + data + "') -- " + pg_ctl() + " " + action + " -D '" + data + "'");
}

firstread::testing::CommandResult start_cluster(const FirstreadService& s) {
  return cluster_ctl(s, "start -w -l '" + s.storage() + "/pg/restart.log' -o \"-c listen_addresses='' -c " +
                            "unix_socket_directories='" + s.storage() + "/pg/run' -p " +
                            std::to_string(s.db_port()) + "\"");
}

}  // namespace

TEST(Node, PostgresRestartedUnderLoadLosesNothingAndIngestResumesByItself) {
  FirstreadService s;
  s.start();
  auto files = firstread::testing::make_instances(kCtSmall, s.dir() + "/send", 400);
  std::string output;
  std::thread sender([&] {
    // One association for all files, as a router sends. Without --no-halt
    // storescu stops at the first failure status; the retry below resends
    // everything that was not acknowledged.
    std::string cmd = "storescu -v -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port());
    for (const auto& f : files) cmd += " " + f.first;
    output = run(cmd).output;
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (count_of(s.log(), "ingest: stored") < 40 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  // The embedded cluster, stopped and started again as its owner would.
  auto stopped = cluster_ctl(s, "stop -w -m fast");
  ASSERT_EQ(stopped.exit_code, 0) << stopped.output;
  std::this_thread::sleep_for(std::chrono::seconds(3));
  auto started = start_cluster(s);
  ASSERT_EQ(started.exit_code, 0) << started.output;
  sender.join();

  const auto acknowledged = acknowledged_in(output, files);
  std::cout << acknowledged.size() << " of 400 acknowledged across the restart\n";
  EXPECT_LT(acknowledged.size(), 400u) << "the database was never down while instances arrived";
  EXPECT_GE(acknowledged.size(), 40u);
  const std::string log = s.log();
  EXPECT_NE(log.find("answered 0xA700: database unavailable: file kept, send it again later"), std::string::npos)
      << log.substr(log.size() > 6000 ? log.size() - 6000 : 0);
  std::cout << line_with(log, "database commit failed") << "\n";
  // Nothing acknowledged is lost.
  {
    auto conn = s.connect();
    pqxx::work t(conn);
    for (const auto& sop : acknowledged)
      EXPECT_EQ(t.exec_params("SELECT 1 FROM api.instances WHERE sop_instance_uid = $1", sop).size(), 1u)
          << "acknowledged " << sop << " lost across the database restart";
  }
  // The same service, not restarted, takes the rest again as a sender retries.
  std::string retry = "storescu -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port());
  for (const auto& f : files)
    if (!acknowledged.count(f.second)) retry += " " + f.first;
  auto again = run(retry);
  EXPECT_EQ(again.exit_code, 0) << again.output;
  auto conn = s.connect();
  pqxx::work t(conn);
  EXPECT_EQ(t.exec1("SELECT count(*) FROM api.instances")[0].as<int>(), 400);
}

// An instance is acknowledged once its file and name are durable and its row
// is committed, without waiting for the row's WAL flush (db::GroupCommit).
// PostgreSQL stopped the hard way right after acknowledgements (what it had not
// flushed is lost, as in a crash) must lose none of them: with firstread
// running on (the committer records the rows again), and after firstread is
// restarted too.
TEST(Node, PostgresStoppedImmediatelyAfterAcknowledgementsLosesNoneOfThem) {
  FirstreadService s;
  s.start();
  constexpr int kSenders = 4;
  std::vector<std::vector<std::pair<std::string, std::string>>> sets;
  for (int i = 0; i < kSenders; ++i)
    sets.push_back(firstread::testing::make_instances(kCtSmall, s.dir() + "/send" + std::to_string(i), 100));
  std::vector<std::string> outputs(kSenders);
  std::vector<std::thread> senders;
  for (int i = 0; i < kSenders; ++i)
    senders.emplace_back([&, i] {
      std::string cmd = "storescu -v -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port());
      for (const auto& f : sets[i]) cmd += " " + f.first;
      outputs[i] = run(cmd).output;
    });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (count_of(s.log(), "ingest: stored") < 60 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  auto stopped = cluster_ctl(s, "stop -w -m immediate");
  ASSERT_EQ(stopped.exit_code, 0) << stopped.output;
  for (auto& t : senders) t.join();
  std::set<std::string> acknowledged;
  for (int i = 0; i < kSenders; ++i)
    for (const auto& sop : acknowledged_in(outputs[i], sets[i])) acknowledged.insert(sop);
  std::cout << acknowledged.size() << " of " << 100 * kSenders << " acknowledged before the immediate stop\n";
  ASSERT_GE(acknowledged.size(), 60u);
  EXPECT_LT(acknowledged.size(), 100u * kSenders) << "the database was never down while instances arrived";
  auto started = start_cluster(s);
  ASSERT_EQ(started.exit_code, 0) << started.output;

  auto missing = [&] { return missing_from_index(s, acknowledged); };
  // firstread still running: the rows the database lost come back by themselves.
  std::vector<std::string> lost;
  EXPECT_TRUE(wait_until([&] { return (lost = missing()).empty(); }, 30))
      << lost.size() << " acknowledged instances missing, e.g. " << lost.front() << "\n"
      << s.log().substr(s.log().size() > 6000 ? s.log().size() - 6000 : 0);
  std::cout << line_with(s.log(), "session broke") << "\n" << line_with(s.log(), "ingest: recorded again") << "\n";
  // And after firstread restarts.
  EXPECT_EQ(s.terminate(), 0);
  s.start();
  const std::vector<std::string> after_restart = missing();
  EXPECT_TRUE(after_restart.empty()) << after_restart.size() << " acknowledged instances missing after the restart";
  auto conn = s.connect();
  pqxx::work t(conn);
  for (const auto& row : t.exec("SELECT file_path FROM api.instances")) {
    DcmFileFormat f;
    EXPECT_TRUE(f.loadFile((s.storage() + "/" + row[0].c_str()).c_str()).good()) << row[0].c_str();
  }
}

// PostgreSQL goes down the hard way (what it had not flushed is lost, as in a
// crash) and firstread is stopped before it comes back, so the committer
// cannot record again what the crash lost: nothing acknowledged may be lost
// all the same (start-up reconciliation indexes the durable files). While the
// database is down every C-STORE answers 0xA700 with a comment that says why
// and what to do; after both are back the sender's retry is stored.
TEST(Node, FirstreadStoppedDuringADatabaseOutageLosesNoAcknowledgedInstance) {
  FirstreadService s;
  s.start();
  auto files = firstread::testing::make_instances(kCtSmall, s.dir() + "/send", 60);
  const std::vector<std::pair<std::string, std::string>> before(files.begin(), files.begin() + 40);
  const std::vector<std::pair<std::string, std::string>> during(files.begin() + 40, files.end());
  // --no-halt: storescu goes on after a failure status, as a router that retries later does.
  auto send = [&](const std::vector<std::pair<std::string, std::string>>& set) {
    std::string cmd = "storescu -v --no-halt -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port());
    for (const auto& f : set) cmd += " " + f.first;
    return run(cmd).output;
  };
  const auto acknowledged = acknowledged_in(send(before), before);
  ASSERT_EQ(acknowledged.size(), before.size()) << "the database was up: every instance is acknowledged";
  auto stopped = cluster_ctl(s, "stop -w -m immediate");
  ASSERT_EQ(stopped.exit_code, 0) << stopped.output;

  const std::string refused_output = send(during);
  EXPECT_TRUE(acknowledged_in(refused_output, during).empty()) << refused_output;
  EXPECT_EQ(count_of(refused_output, "Received Store Response"), during.size()) << refused_output;
  const std::string log = s.log();
  for (const auto& f : during)
    EXPECT_NE(log.find("C-STORE sop=" + f.second + " calling_ae=STORESCU answered 0xA700: database unavailable: "
                       "file kept, send it again later"),
              std::string::npos)
        << f.second << "\n" << log.substr(log.size() > 4000 ? log.size() - 4000 : 0);

  // firstread stops while the database is still down, then both come back.
  EXPECT_EQ(s.terminate(), 0);
  s.start();
  auto missing = [&] { return missing_from_index(s, acknowledged); };
  // Files younger than reconciliation's grace period are looked at once it has passed.
  std::vector<std::string> lost;
  EXPECT_TRUE(wait_until([&] { return (lost = missing()).empty(); }, 60))
      << lost.size() << " acknowledged instances missing, e.g. " << (lost.empty() ? "" : lost.front()) << "\n"
      << s.log().substr(s.log().size() > 6000 ? s.log().size() - 6000 : 0);
  const std::string after = s.log();
  const auto last_summary = after.rfind("reconcile: ");
  std::cout << line_with(after.substr(last_summary == std::string::npos ? 0 : last_summary), "reconcile: ") << "\n";

  // The sender's retry of what was refused is stored and acknowledged.
  const std::string retry_output = send(during);
  EXPECT_EQ(acknowledged_in(retry_output, during).size(), during.size()) << retry_output;
  auto conn = s.connect();
  pqxx::work t(conn);
  EXPECT_EQ(t.exec1("SELECT count(*) FROM api.instances")[0].as<int>(), 60);
  for (const auto& row : t.exec("SELECT file_path FROM api.instances")) {
    DcmFileFormat f;
    EXPECT_TRUE(f.loadFile((s.storage() + "/" + row[0].c_str()).c_str()).good()) << row[0].c_str();
  }
}

TEST(Node, DiskFillingDuringATransferAnswersA700AndLeavesNoPartialFile) {
  if (geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs as the full disk needs root";
  FirstreadService a;  // provides the database
  a.start();
  const firstread::testing::SmallDisk disk("12m");
  ASSERT_EQ(disk.error(), "");
  const std::string& mount_dir = disk.dir();
  {
    FirstreadService b(a, 4, "  min_free_bytes: 2MiB\n", mount_dir);
    b.start();
    // 40 instances of 512 KB into 12 MB: the disk fills in the middle.
    auto files = firstread::testing::make_instances(kCtSmall, a.dir() + "/big", 40, 512);
    std::string cmd = "storescu -v -aec FIRSTREAD 127.0.0.1 " + std::to_string(b.port());
    for (const auto& f : files) cmd += " " + f.first;
    auto r = run(cmd);
    const auto acknowledged = acknowledged_in(r.output, files);
    std::cout << acknowledged.size() << " of 40 acknowledged before the disk was full\n";
    EXPECT_GE(acknowledged.size(), 5u) << r.output;
    EXPECT_LT(acknowledged.size(), 40u);
    const std::string log = b.log();
    EXPECT_NE(log.find("answered 0xA700: storage: No space left on device"), std::string::npos) << log;
    std::cout << line_with(log, "answered 0xA700") << "\n";
    // No partial file: no temporary left, every stored file complete and indexed.
    for (const auto& e : std::filesystem::directory_iterator(mount_dir + "/tmp"))
      ADD_FAILURE() << "partial file left: " << e.path();
    auto conn = a.connect();
    pqxx::work t(conn);
    int files_on_disk = 0;
    for (const auto& e : std::filesystem::recursive_directory_iterator(mount_dir + "/instances")) {
      if (!e.is_regular_file()) continue;
      ++files_on_disk;
      DcmFileFormat f;
      EXPECT_TRUE(f.loadFile(e.path().c_str()).good()) << e.path();
    }
    EXPECT_EQ(t.exec1("SELECT count(*) FROM api.instances")[0].as<int>(), files_on_disk);
    for (const auto& sop : acknowledged)
      EXPECT_EQ(t.exec_params("SELECT 1 FROM api.instances WHERE sop_instance_uid = $1", sop).size(), 1u) << sop;
    t.commit();
    // A new association is now refused with the reason; the node still answers.
    auto refused = run("echoscu -aec FIRSTREAD 127.0.0.1 " + std::to_string(b.port()));
    EXPECT_NE(refused.exit_code, 0);
    EXPECT_NE(b.log().find("below storage.min_free_bytes"), std::string::npos) << b.log();
    std::cout << line_with(b.log(), "below storage.min_free_bytes") << "\n";
  }
}

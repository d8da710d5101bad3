// STOW-RS export (issue 17): the sibling of send_file's C-STORE for
// export.destinations[] of type stowrs. One stored file is POSTed to
// <url>/studies as multipart/related; type="application/dicom" (Boost.Beast,
// OpenSSL for https with the destination's CA file), with a bearer token or
// basic credentials read from the environment at each send. It counts as sent
// only when the server answers 200/202 and lists the instance in its
// ReferencedSOPSequence; anything else is a failure the outbox retries.
#pragma once

#include <string>

#include "config/config.h"
#include "reports/export_outbox.h"

namespace firstread::reports {

SendResult send_stowrs(const std::string& path, const config::ExportDestination& destination);

// The PS3.18 answer: did the server store `sop_instance_uid`? Empty when it
// did, else why not (its failure reason, or what is missing).
std::string stow_outcome(unsigned http_status, const std::string& body, const std::string& sop_instance_uid);

}  // namespace firstread::reports

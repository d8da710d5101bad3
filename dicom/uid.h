// DICOM unique identifiers: the one validator every component uses before a
// UID reaches a file name, a query, the database or a DICOM object.
#pragma once

#include <string_view>

namespace firstread::dicom {

// Longest UID PS3.5 §9.1 allows.
inline constexpr size_t kMaxUidLength = 64;

// True when uid has the syntax of PS3.5 §9.1: 1..64 characters, components of
// digits separated by single dots, no empty component. Such a UID is safe as a
// file or folder name (digits and dots only, never "." or "..").
//
// One rule of §9.1 is not enforced: a component with a leading zero ("083000").
// Archives carry such UIDs from older modalities (GDCM's sample 00191113.dcm
// has Study Instance UID 999.999.2.19940822.083000); refusing them at C-STORE
// would leave those studies unreceivable, and refusing them later (in the SR)
// would leave a received study without a report. firstread never mints one:
// its own UIDs come from DCMTK's generator or 2.25 decimal forms.
bool is_valid_uid(std::string_view uid);

}  // namespace firstread::dicom

// Whether the database answers (for /readyz).
#pragma once

#include "db/database.h"

namespace firstread::db {

// Runs one trivial query; throws what the connection or the server threw.
void ping(ConnectionPool& pool);

}  // namespace firstread::db

# Writes every migration file into a C++ array of {version, name, sql}.
# DIR is the migrations folder; files are applied in name order (NNNN_name.sql).
file(GLOB FILES ${DIR}/*.sql)
list(SORT FILES)
set(body "#include \"db/database.h\"\nnamespace firstread::db {\nconst std::vector<Migration>& migrations() {\n  static const std::vector<Migration> list = {\n")
foreach(f ${FILES})
  get_filename_component(name ${f} NAME_WE)
  string(REGEX MATCH "^[0-9]+" version ${name})
  math(EXPR version "${version} + 0")
  file(READ ${f} sql)
  set(body "${body}    {${version}, \"${name}\", R\"firstread_sql(${sql})firstread_sql\"},\n")
endforeach()
set(body "${body}  };\n  return list;\n}\n}  // namespace firstread::db\n")
file(WRITE ${OUT} "${body}")

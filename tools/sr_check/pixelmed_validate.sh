#!/bin/sh
# Template (TID) validation of SR files with David Clunie's PixelMed validator,
# the one IHE Gazelle EVS uses for AIR: dciodvfy checks the IOD only.
# Needs Debian's libpixelmed-java (apt-get install libpixelmed-java) and a JRE.
# About 20 s per file (it compiles its XSLT each time), so it is not part of
# the unit tests; run it by hand on SRs kept with FIRSTREAD_KEEP_SR_FILES=1.
#
# Usage: tools/sr_check/pixelmed_validate.sh FILE.dcm...
# Prints the validator's report per file; exits 1 if any report has "Error".
set -u
jar=/usr/share/java/pixelmed.jar
if [ ! -f "$jar" ]; then
  echo "pixelmed_validate: $jar missing; apt-get install libpixelmed-java" >&2
  exit 2
fi
classpath="$jar:/usr/share/java/commons-codec.jar:/usr/share/java/commons-compress.jar"
status=0
for file in "$@"; do
  echo "== $file"
  # The JDK's default XPath limits are too small for PixelMed's compiled templates.
  report=$(java -Djdk.xml.xpathExprOpLimit=0 -Djdk.xml.xpathExprGrpLimit=0 -Djdk.xml.xpathTotalOpLimit=0 \
    -cp "$classpath" com.pixelmed.validate.DicomSRValidator -checkcontentitemorder "$file" 2>&1)
  echo "$report"
  if echo "$report" | grep -q "Error"; then status=1; fi
done
exit $status

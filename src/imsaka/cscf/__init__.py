"""imsaka.cscf"""
